//! `gaze caption` against the PyTorch CATR fixture, and its failures.

mod common;

use std::path::PathBuf;

use common::*;

const SMALL: &str = CATR_SMALL_ARCH;

#[test]
fn captions_maps_and_failures() {
    let dir = scratch("caption");
    let arch = dir.join("catr_small.json");
    std::fs::write(&arch, SMALL).unwrap();
    let f = catr_fixtures();
    let (weights, vocab) = (f.join("catr_small_ends.pth"), f.join("vocab.txt"));
    let out = dir.join("out");
    let run = |weights: &PathBuf, vocab: &PathBuf, image: &PathBuf, out: &PathBuf| {
        gaze(&[
            "caption",
            "--weights",
            weights.to_str().unwrap(),
            "--vocab",
            vocab.to_str().unwrap(),
            "--arch",
            arch.to_str().unwrap(),
            "--images",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])
    };
    let result = run(&weights, &vocab, &f.join("images"), &out);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.join("expected.json")).unwrap()).unwrap();
    for stem in ["wide_640x480", "tall_480x640", "odd_550x400"] {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{stem}.json"))).unwrap()).unwrap();
        assert_eq!(json["token_ids"], expected[stem]["ends_tokens"], "{stem}");
        let [h, w] = [
            json["feat_grid"][0].as_u64().unwrap() as usize,
            json["feat_grid"][1].as_u64().unwrap() as usize,
        ];
        let mut maps: Vec<f32> = Vec::new();
        for map in json["attention"]
            .as_array()
            .unwrap()
            .iter()
            .chain(std::iter::once(&json["end_attention"]))
        {
            let rows = map.as_array().unwrap();
            assert_eq!(
                (rows.len(), rows[0].as_array().unwrap().len()),
                (h, w),
                "{stem}: maps are [h][w]"
            );
            maps.extend(
                rows.iter()
                    .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)),
            );
        }
        let diff = max_abs_diff(
            &maps,
            &read_f32(
                &catr_fixtures().join("expected.safetensors"),
                &format!("ends_attn.{stem}"),
            ),
        );
        assert!(diff < 1e-5, "{stem}: attention differs from PyTorch by {diff}");
        // Different steps look at different places: the maps are not one map repeated.
        assert_ne!(json["attention"][0], json["end_attention"], "{stem}");
        let png = gaze_data::image::open(out.join(format!("{stem}.png"))).unwrap();
        assert!(png.width() > png.height(), "{stem}: panels side by side");
    }

    // Failures: one line naming the file, no outputs.
    let fail = |weights: &PathBuf, vocab: &PathBuf, image: &PathBuf, needle: &str| {
        let out = dir.join("failed");
        let result = run(weights, vocab, image, &out);
        let stderr = String::from_utf8_lossy(&result.stderr).trim().to_string();
        assert!(!result.status.success(), "{needle}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().count() == 0,
            "partial output after: {stderr}"
        );
    };
    let image = f.join("images/square_300x300.png");
    let short_vocab = dir.join("vocab_short.txt");
    std::fs::write(&short_vocab, "[PAD]\na\nb\n").unwrap();
    fail(&weights, &short_vocab, &image, "vocab_short.txt");
    let vit = fixtures().join("reduced.pth");
    fail(&vit, &vocab, &image, "not a CATR checkpoint");
    let broken = dir.join("images");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(&image, broken.join("a.png")).unwrap();
    std::fs::write(broken.join("b.jpg"), "text, not a picture").unwrap();
    fail(&weights, &vocab, &broken, "b.jpg");
    std::fs::remove_dir_all(&dir).unwrap();
}
