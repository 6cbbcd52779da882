//! End-to-end checks of the `gaze` binary: parity of a full-size ViT-S/16-384 with timm, and
//! clear failures on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use gaze_vit::VitConfig;
use gaze_vit::checkpoint::state_dict_shapes;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vit/tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaze-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gaze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(args)
        .output()
        .unwrap()
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0x811C_9DC5u64, |h, b| {
        ((h ^ b as u64) * 0x0100_0193) & 0xFFFF_FFFF
    })
}

/// The deterministic weights of `formula_value` in tools/gen_vit_fixtures.py, value for value.
fn formula_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = fnv1a(name);
    (0..n as u64)
        .map(|i| {
            let mut x = (i * 2_654_435_761 + seed) & 0xFFFF_FFFF;
            x ^= x >> 15;
            x = (x * 0x2C1B_3C6D) & 0xFFFF_FFFF;
            x ^= x >> 12;
            let h = x as f64 / 4_294_967_296.0 - 0.5;
            let v = if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name == "norm.weight"
            {
                1.0 + 0.4 * h
            } else if name.ends_with("bias") {
                0.2 * h
            } else if name.ends_with("qkv.weight") {
                let row = i as usize / shape[1];
                (if row < 2 * shape[1] { 0.5 } else { 0.1 }) * h
            } else if name == "cls_token" || name == "pos_embed" {
                0.5 * h
            } else {
                0.1 * h
            };
            v as f32
        })
        .collect()
}

fn write_formula_vit_small(path: &Path) {
    let model = VitConfig::new().with_num_classes(37).init(&Device::flex());
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = state_dict_shapes(&model)
        .into_iter()
        .map(|(name, shape)| {
            let bytes = formula_value(&name, &shape)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn expected_logits(key: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixtures().join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn predictions(json: &Path) -> Vec<(String, usize, Vec<f32>)> {
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let logits = p["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            (
                p["filename"].as_str().unwrap().to_string(),
                p["label"].as_u64().unwrap() as usize,
                logits,
            )
        })
        .collect()
}

const FULL_SIZE: [&str; 4] = ["rgb_500x375", "rgb_375x500", "rgb_384x384", "rgb_640x427"];

#[test]
fn full_size_vit_small_matches_timm_on_png_and_jpeg() {
    let dir = scratch("full");
    let weights = dir.join("vit_small_formula.safetensors");
    write_formula_vit_small(&weights);
    // JPEG decoding is libjpeg-turbo's, as in Pillow, so JPEG gets the same tolerance as PNG.
    for (ext, key, tolerance) in [("png", "full/logits", 1e-3f32), ("jpg", "full/logits_jpeg", 1e-3)] {
        let images: Vec<String> = FULL_SIZE
            .iter()
            .map(|s| fixtures().join(format!("images/{s}.{ext}")).display().to_string())
            .collect();
        let csv = dir.join(format!("preds_{ext}.csv"));
        let json = dir.join(format!("preds_{ext}.json"));
        let mut args = vec!["predict", "--weights", weights.to_str().unwrap(), "--images"];
        args.extend(images.iter().map(String::as_str));
        args.extend([
            "--out",
            csv.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--batch-size",
            "3",
        ]);
        let out = gaze(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let preds = predictions(&json);
        let mut rows = vec!["filename,label".to_string()];
        for (filename, label, logits) in &preds {
            let stem = filename.rsplit_once('.').unwrap().0;
            let want = expected_logits(&format!("{key}.{stem}"));
            let diff = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("{filename}: max abs logit diff vs timm {diff:e}");
            assert!(diff < tolerance, "{filename}: logits differ from timm by {diff}");
            if ext == "png" {
                let timm_label = gaze_vit::infer::argmax(&want);
                assert_eq!(*label, timm_label, "{filename}");
            }
            rows.push(format!("{filename},{label}"));
        }
        let mut sorted = preds.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        sorted.sort();
        assert_eq!(
            preds.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            sorted,
            "rows sorted by file name"
        );
        assert_eq!(std::fs::read_to_string(&csv).unwrap(), rows.join("\n") + "\n");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `gaze predict` expecting failure; returns the single line of stderr.
fn predict_fails(weights: &Path, images: &Path, model: Option<&str>, csv: &Path) -> String {
    let mut args = vec![
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
    ];
    args.extend(["--out", csv.to_str().unwrap()]);
    if let Some(m) = model {
        args.extend(["--model", m]);
    }
    let out = gaze(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "expected failure for {}", images.display());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!csv.exists(), "no partial CSV after: {stderr}");
    stderr
}

#[test]
fn bad_input_fails_with_one_line_naming_the_file() {
    let dir = scratch("bad");
    let csv = dir.join("preds.csv");
    // A gaze-written reduced model (config in metadata), so --model is not needed.
    let (model, config) = gaze_vit::load_vit(
        &fixtures().join("reduced.safetensors"),
        &VitConfig::new()
            .with_img_size([64, 64])
            .with_embed_dim(48)
            .with_depth(2)
            .with_num_heads(3),
        gaze_vit::HeadInit::FromCheckpoint,
        &Device::flex(),
    )
    .unwrap();
    let weights = dir.join("reduced_gaze.safetensors");
    gaze_vit::save_vit(&model, &config, &weights).unwrap();

    let good = std::fs::read(fixtures().join("images/rgb_500x375.jpg")).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("0_1.jpg"), &good).unwrap();
    std::fs::write(images.join("1_2.jpg"), &good[..good.len() / 2]).unwrap();
    let err = predict_fails(&weights, &images, None, &csv);
    assert!(err.contains("1_2.jpg") && err.contains("truncated"), "{err}");

    std::fs::write(images.join("1_2.jpg"), "this is text").unwrap();
    let err = predict_fails(&weights, &images, None, &csv);
    assert!(err.contains("1_2.jpg"), "{err}");

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = predict_fails(&weights, &empty, None, &csv);
    assert!(err.contains(empty.to_str().unwrap()), "{err}");

    let missing = dir.join("nowhere");
    let err = predict_fails(&weights, &missing, None, &csv);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    std::fs::remove_file(images.join("1_2.jpg")).unwrap();
    let err = predict_fails(&weights, &images, Some("vit_small_patch16_384"), &csv);
    assert!(
        err.contains("reduced_gaze.safetensors") && err.contains("wrongly shaped"),
        "{err}"
    );
    let err = predict_fails(&dir.join("none.safetensors"), &images, None, &csv);
    assert!(err.contains("none.safetensors"), "{err}");

    // And the same folder works once it is clean.
    let out = gaze(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--out",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .starts_with("filename,label\n0_1.jpg,")
    );

    // eval reads labels from the names and reports accuracy.
    let metrics = dir.join("metrics.json");
    let out = gaze(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
        "--json",
        metrics.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&metrics).unwrap()).unwrap();
    assert_eq!(m["images"], 1);
    assert_eq!(m["confusion"].as_array().unwrap().len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}
