//! `gaze posembed` and `gaze attention` against timm's numbers, and figure geometry.

mod common;

use std::path::Path;

use common::*;
use gaze_data::image::GenericImageView;

fn attention_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Runs `gaze posembed --npy` and returns the matrix's shape and values.
fn posembed(weights: &Path, dir: &Path) -> (Vec<usize>, Vec<f32>) {
    let (png, npy) = (dir.join("posembed.png"), dir.join("sims.npy"));
    let out = gaze(&[
        "posembed",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(gaze_data::image::open(&png).is_ok());
    let sims = gaze_data::read_npy::<gaze_data::ndarray::Ix2>(&npy).unwrap();
    (sims.shape().to_vec(), sims.iter().copied().collect())
}

/// Runs `gaze attention --json` on fixture images `stems` and returns the output folder.
fn attention(weights: &Path, dir: &Path, stems: &[&str]) -> std::path::PathBuf {
    let figs = dir.join("attention");
    let images: Vec<String> = stems
        .iter()
        .map(|s| fixtures().join(format!("images/{s}.png")).display().to_string())
        .collect();
    let mut args = vec![
        "attention",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        figs.to_str().unwrap(),
    ];
    args.extend(["--json", "--images"]);
    args.extend(images.iter().map(String::as_str));
    let out = gaze(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    figs
}

#[test]
fn reduced_model_numbers_equal_timms() {
    let dir = scratch("fig-reduced");
    let weights = reduced_gaze_weights(&dir);
    let (shape, sims) = posembed(&weights, &dir);
    assert_eq!(shape, [16, 16]);
    let diff = max_abs_diff(&sims, &expected_f32("posembed_sim"));
    assert!(diff < 1e-6, "similarity differs from timm by {diff}");

    let figs = attention(&weights, &dir, &["rgb_640x427", "gray_300x200", "rgba_97x61"]);
    for stem in ["rgb_640x427", "gray_300x200", "rgba_97x61"] {
        let json = attention_json(&figs.join(format!("{stem}.json")));
        assert_eq!(json["grid"], serde_json::json!([4, 4]));
        let diff = max_abs_diff(
            &floats(&json["cls_attention"]),
            &expected_f32(&format!("cls_attn.{stem}")),
        );
        assert!(diff < 1e-6, "{stem}: cls attention differs from timm by {diff}");
        let p = json["probability"].as_f64().unwrap();
        assert!(p > 0.2 && p <= 1.0, "{p}");
        assert!(figs.join(format!("{stem}.png")).exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_size_numbers_match_timm_and_figures_keep_the_aspect_ratio() {
    let dir = scratch("fig-full");
    let weights = dir.join("vit_small_formula.safetensors");
    write_formula_vit_small(&weights);
    let (shape, sims) = posembed(&weights, &dir);
    assert_eq!(shape, [576, 576]);
    let want = expected_f32("full/posembed_sim_rows");
    for (i, row) in [0usize, 100, 575].into_iter().enumerate() {
        let diff = max_abs_diff(&sims[row * 576..(row + 1) * 576], &want[i * 576..(i + 1) * 576]);
        assert!(diff < 1e-5, "row {row}: similarity differs from timm by {diff}");
    }

    let figs = attention(&weights, &dir, &FULL_SIZE);
    for stem in FULL_SIZE {
        let json = attention_json(&figs.join(format!("{stem}.json")));
        assert_eq!(json["grid"], serde_json::json!([24, 24]));
        let diff = max_abs_diff(
            &floats(&json["cls_attention"]),
            &expected_f32(&format!("full/cls_attn.{stem}")),
        );
        eprintln!("{stem}: cls attention max abs diff vs timm {diff:e}");
        assert!(diff < 1e-4, "{stem}: cls attention differs from timm by {diff}");
    }
    // Two panels (image, overlay) at the resized size: 640x427 -> 575x384, 375x500 -> 384x512.
    let wide = gaze_data::image::open(figs.join("rgb_640x427.png")).unwrap();
    let tall = gaze_data::image::open(figs.join("rgb_375x500.png")).unwrap();
    assert!(
        wide.width() >= 2 * 575 && wide.height() < 575,
        "{:?}",
        wide.dimensions()
    );
    assert!(
        tall.height() >= 512 && tall.width() < 2 * 512,
        "{:?}",
        tall.dimensions()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
