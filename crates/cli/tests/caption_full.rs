//! A full-size CATR v3 (ResNet-101, 84M parameters, 30522 word pieces) through
//! `gaze caption --json`, against PyTorch on the same formula weights
//! (tools/gen_catr_full.py), on 640x480, 480x640, 300x300 and 550x400 pictures.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::Device;
use common::*;
use gaze_caption::{CatrConfig, checkpoint_key};
use gaze_nn::checkpoint::state_dict_shapes;

fn catr_fixtures() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../caption/tests/fixtures")
}

#[test]
fn full_size_catr_matches_pytorch() {
    let dir = scratch("catr-full");
    let model = CatrConfig::v3().init(&Device::flex());
    let shapes: BTreeMap<String, Vec<usize>> = state_dict_shapes(&model)
        .into_iter()
        .map(|(k, v)| (checkpoint_key(&k), v))
        .collect();
    drop(model);
    assert_eq!(shapes.len(), 716);
    let total: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(total, 84_392_954);
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = shapes
        .into_iter()
        .map(|(k, s)| (k.clone(), s.clone(), catr_formula_value(&k, &s)))
        .collect();
    let weights = dir.join("catr_v3_formula.safetensors");
    write_safetensors(&weights, &tensors);
    drop(tensors);
    // A 30522-line vocabulary with bert's special ids in place.
    let mut vocab: Vec<String> = (0..30522).map(|i| format!("w{i}")).collect();
    for (id, t) in [
        (0, "[PAD]"),
        (100, "[UNK]"),
        (101, "[CLS]"),
        (102, "[SEP]"),
        (103, "[MASK]"),
    ] {
        vocab[id] = t.into();
    }
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n").unwrap();

    let stems = ["wide_640x480", "tall_480x640", "square_300x300", "odd_550x400"];
    let images: Vec<String> = stems
        .iter()
        .map(|s| {
            catr_fixtures()
                .join(format!("images/{s}.png"))
                .display()
                .to_string()
        })
        .collect();
    let out = dir.join("out");
    let mut args = vec![
        "caption",
        "--weights",
        weights.to_str().unwrap(),
        "--vocab",
        vocab_path.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap(), "--json", "--images"]);
    args.extend(images.iter().map(String::as_str));
    let started = std::time::Instant::now();
    let result = gaze(&args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!(
        "4 full-size captions in {:.1} s (debug-profile binary)",
        started.elapsed().as_secs_f64()
    );
    eprint!("{}", String::from_utf8_lossy(&result.stdout));

    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(catr_fixtures().join("full_expected.json")).unwrap()).unwrap();
    for stem in stems {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{stem}.json"))).unwrap()).unwrap();
        assert_eq!(json["token_ids"], expected[stem], "{stem}: tokens");
        let mut maps: Vec<f32> = Vec::new();
        let end = json["end_attention"].clone();
        for map in json["attention"]
            .as_array()
            .unwrap()
            .iter()
            .chain((!end.is_null()).then_some(&end))
        {
            maps.extend(
                map.as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32)),
            );
        }
        let want = read_f32(
            &catr_fixtures().join("full_expected.safetensors"),
            &format!("attn.{stem}"),
        );
        let diff = max_abs_diff(&maps, &want);
        eprintln!(
            "{stem}: {} tokens, attention max abs diff vs PyTorch {diff:e}",
            json["token_ids"].as_array().unwrap().len()
        );
        assert!(diff < 1e-3, "{stem}: attention differs from PyTorch by {diff}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
