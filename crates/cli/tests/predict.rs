//! End-to-end checks of the `gaze` binary: parity of a full-size ViT-S/16-384 with timm, and
//! clear failures on bad input.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

#[test]
fn full_size_vit_small_matches_timm_on_png_and_jpeg() {
    full_size_vit_small_matches_timm("auto", &["png", "jpg"]);
}

#[test]
fn wgpu_full_size_vit_small_matches_timm() {
    if gaze_nn::test_support::wgpu_device().is_none() {
        return;
    }
    let version = gaze(&["--version"]);
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains("wgpu"),
        "the test build's gaze lacks wgpu: {version}"
    );
    full_size_vit_small_matches_timm("wgpu", &["png"]);
}

/// `gaze predict --device DEVICE` on the full-size fixtures in each of `exts`.
fn full_size_vit_small_matches_timm(device: &str, exts: &[&str]) {
    let dir = scratch(&format!("full-{device}"));
    let weights = dir.join("vit_small_formula.safetensors");
    write_formula_vit_small(&weights);
    // JPEG decoding is libjpeg-turbo's, as in Pillow, so JPEG gets the same tolerance as PNG.
    for (ext, key, tolerance) in [("png", "full/logits", 1e-3f32), ("jpg", "full/logits_jpeg", 1e-3)] {
        if !exts.contains(&ext) {
            continue;
        }
        let images: Vec<String> = FULL_SIZE
            .iter()
            .map(|s| fixtures().join(format!("images/{s}.{ext}")).display().to_string())
            .collect();
        let csv = dir.join(format!("preds_{ext}.csv"));
        let json = dir.join(format!("preds_{ext}.json"));
        let mut args = vec!["predict", "--weights", weights.to_str().unwrap()];
        if device == "auto" {
            // timm's full name, as copied from the Hub, gives the same model.
            args.extend(["--model", "vit_small_patch16_384.augreg_in21k_ft_in1k"]);
        }
        args.push("--images");
        args.extend(images.iter().map(String::as_str));
        args.extend([
            "--out",
            csv.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--batch-size",
            "3",
            "--device",
            device,
        ]);
        let out = gaze(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let preds = predictions(&json);
        let mut rows = vec!["filename,label".to_string()];
        for (filename, label, logits) in &preds {
            let stem = filename.rsplit_once('.').unwrap().0;
            let want = expected_f32(&format!("{key}.{stem}"));
            let diff = logits
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            eprintln!("{filename}: max abs logit diff vs timm {diff:e}");
            assert!(diff < tolerance, "{filename}: logits differ from timm by {diff}");
            if ext == "png" {
                let timm_label = gaze_nn::argmax(&want);
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

/// The Hub fixture: its weights, timm's logits per image name, and the images' paths.
fn hub_fixture() -> (PathBuf, BTreeMap<String, Vec<f32>>, Vec<String>) {
    let hub = fixtures().join("hub");
    let expected: BTreeMap<String, Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(hub.join("expected.json")).unwrap()).unwrap();
    let images = expected
        .keys()
        .map(|name| fixtures().join("images").join(name).display().to_string())
        .collect();
    (hub.join("model.safetensors"), expected, images)
}

/// `gaze predict` of every Hub fixture image into `dir`'s preds.csv and preds.json, with
/// `extra` arguments.
fn predict_hub(dir: &Path, extra: &[&str]) -> (std::process::Output, [PathBuf; 2]) {
    let (weights, _, images) = hub_fixture();
    let (csv, json) = (dir.join("preds.csv"), dir.join("preds.json"));
    let mut args = vec!["predict", "--weights", weights.to_str().unwrap(), "--images"];
    args.extend(images.iter().map(String::as_str));
    args.extend(["--out", csv.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    args.extend(extra);
    (gaze(&args), [csv, json])
}

/// A Hub folder that timm wrote (`model.safetensors` + `config.json`, tools/gen_hub_fixture.py):
/// its config.json gives the architecture, ImageNet mean/std, crop_pct and class names.
#[test]
fn hub_folder_matches_timm_and_names_its_classes() {
    let dir = scratch("hub");
    let (_, expected, _) = hub_fixture();
    let names = ["Abyssinian", "Bengal", "american_bulldog", "beagle"];
    let (out, [csv, json]) = predict_hub(&dir, &["--with-names", "--probabilities", "--top-k", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<gaze_records::Prediction> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "filename,label,name,probability,top1_label,top1_name,top1_probability,top2_label,top2_name,top2_probability"
    );
    for (row, line) in rows.iter().zip(lines) {
        let want = &expected[&row.filename];
        let diff = row
            .logits
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{}: logits differ from timm by {diff}", row.filename);
        let label = gaze_nn::argmax(want);
        assert_eq!((row.label, row.name.as_deref()), (label, Some(names[label])));
        let top = row.top_k.as_ref().unwrap();
        assert_eq!((top.len(), top[0].label), (2, label));
        assert!(top[0].probability > top[1].probability);
        assert!(
            line.starts_with(&format!("{},{label},{},", row.filename, names[label])),
            "{line}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_keeps_timms_top1_says_which_kernel_runs_and_is_refused_off_flex() {
    let dir = scratch("bf16");
    let (weights, expected, images) = hub_fixture();
    let (out, [_, json]) = predict_hub(&dir, &["--precision", "bf16", "--device", "flex"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let kernel = if gaze_nn::ops::bf16::cpu_has_avx512_bf16() {
        "vdpbf16ps"
    } else {
        "emulated"
    };
    assert_eq!(stderr.matches(kernel).count(), 1, "one notice line: {stderr}");
    let mut worst = 0f32;
    for (name, label, logits) in predictions(&json) {
        let want = &expected[&name];
        assert_eq!(label, gaze_nn::argmax(want), "{name}: bf16 changed the top-1");
        worst = worst.max(max_abs_diff(&logits, want));
    }
    eprintln!("bf16 vs timm fp32 on the hub model: logits within {worst:e}");
    assert!(worst > 0.0 && worst < 5e-2, "{worst}");
    // Off flex: one line, before anything is read or written.
    let csv = dir.join("wgpu.csv");
    let out = gaze(&[
        "predict",
        "--weights",
        weights.to_str().unwrap(),
        "--images",
        &images[0],
        "--out",
        csv.to_str().unwrap(),
        "--precision",
        "bf16",
        "--device",
        "wgpu",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success() && !csv.exists());
    assert!(
        stderr.lines().count() == 1 && stderr.contains("flex") && stderr.contains("--precision fp32"),
        "{stderr}"
    );
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

/// Runs `gaze predict` on `images` into `csv` and asserts that it succeeds.
fn predict_succeeds(weights: &Path, images: &Path, csv: &Path) {
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
}

#[test]
fn bad_input_fails_with_one_line_naming_the_file() {
    let dir = scratch("bad");
    let csv = dir.join("preds.csv");
    // A gaze-written reduced model (config in metadata), so --model is not needed.
    let weights = reduced_gaze_weights(&dir);

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
    predict_succeeds(&weights, &images, &csv);
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

#[test]
fn file_names_with_commas_and_quotes_stay_one_csv_field() {
    let dir = scratch("csv-quoting");
    let weights = reduced_gaze_weights(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for name in ["a,b.png", "say \"hi\".png", "plain.png"] {
        std::fs::copy(fixtures().join("images/gray_300x200.png"), images.join(name)).unwrap();
    }
    let csv = dir.join("preds.csv");
    predict_succeeds(&weights, &images, &csv);
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "filename,label");
    // RFC 4180: a field with a comma or a quote is quoted, its quotes doubled; others are not.
    let label = lines[3].rsplit_once(',').unwrap().1;
    assert_eq!(lines[1], format!("\"a,b.png\",{label}"));
    assert_eq!(lines[2], format!("plain.png,{label}"));
    assert_eq!(lines[3], format!("\"say \"\"hi\"\".png\",{label}"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_version_names_the_compiled_backends() {
    let out = gaze(&["--version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("gaze {} (backends: ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // The binary's backends are gaze-nn's features, which this test links with too; the test
    // build always has flex and wgpu (the dev-dependency on gaze-nn asks for them).
    let backends: Vec<&str> = gaze_nn::available_devices()
        .into_iter()
        .filter(|d| *d != "tch-cuda")
        .collect();
    assert!(
        backends.contains(&"flex") && backends.contains(&"wgpu"),
        "{backends:?}"
    );
    assert!(
        text.contains(&format!("(backends: {})", backends.join(", "))),
        "{text}"
    );
}
