//! Parity with a PyTorch CATR (tools/gen_catr_fixtures.py, decoding as predict.py).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use gaze_caption::{CaptionError, CatrConfig, load_catr, preprocess};
use gaze_data::load_rgb;
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    gaze_nn::test_support::fixtures(env!("CARGO_MANIFEST_DIR"))
}

fn small() -> CatrConfig {
    CatrConfig::new()
        .with_resnet_blocks([1, 1, 2, 2])
        .with_resnet_width(8)
        .with_hidden_dim(32)
        .with_nheads(4)
        .with_enc_layers(2)
        .with_dec_layers(2)
        .with_dim_feedforward(64)
        .with_vocab_size(140)
}

const STEMS: [&str; 5] = [
    "wide_640x480",
    "tall_480x640",
    "square_300x300",
    "odd_550x400",
    "small_120x90",
];

fn expected_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn expected_f32(key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(key).unwrap();
    (
        view.shape().to_vec(),
        view.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

fn fnv1a64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    format!("{h:016x}")
}

fn input(stem: &str, device: &Device) -> Tensor<4> {
    let image = load_rgb(&fixtures().join(format!("images/{stem}.png"))).unwrap();
    let (resized, pixels) = preprocess(&image, 299);
    let (w, h) = resized.dimensions();
    Tensor::from_data(TensorData::new(pixels, [1, 3, h as usize, w as usize]), device)
}

#[test]
fn preprocessing_is_bit_exact_with_pillow() {
    let expected = expected_json();
    for stem in STEMS {
        let image = load_rgb(&fixtures().join(format!("images/{stem}.png"))).unwrap();
        let (resized, _) = preprocess(&image, 299);
        let want = &expected[stem];
        assert_eq!(
            serde_json::json!([resized.width(), resized.height()]),
            want["size"],
            "{stem}"
        );
        assert_eq!(
            fnv1a64(resized.as_raw()),
            want["resized_fnv"].as_str().unwrap(),
            "{stem}"
        );
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn greedy_captions_match_pytorch() {
    greedy_captions_match_pytorch_on(&Device::flex());
}

#[test]
fn wgpu_greedy_captions_match_pytorch() {
    if let Some(device) = gaze_nn::test_support::wgpu_device() {
        greedy_captions_match_pytorch_on(&device);
    }
}

fn greedy_captions_match_pytorch_on(device: &Device) {
    let expected = expected_json();
    let model = load_catr(&fixtures().join("catr_small.pth"), &small(), device).unwrap();
    let ends = load_catr(&fixtures().join("catr_small_ends.pth"), &small(), device).unwrap();
    let (mut worst_logit, mut worst_attn) = (0f32, 0f32);
    for stem in STEMS {
        let x = input(stem, device);
        for (prefix, m) in [("", &model), ("ends_", &ends)] {
            let out = m.caption(x.clone(), 127);
            let tokens: Vec<usize> = expected[stem][format!("{prefix}tokens")]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(out.tokens, tokens, "{stem} {prefix}tokens");
            let (shape, attn) = expected_f32(&format!("{prefix}attn.{stem}"));
            assert_eq!(out.attention.len(), shape[0], "{stem}: one map per step");
            assert_eq!(out.grid.0 * out.grid.1, shape[1], "{stem}: feature grid");
            worst_attn = worst_attn.max(max_abs_diff(&out.attention.concat(), &attn));
            if prefix.is_empty() {
                let (_, logits) = expected_f32(&format!("logits0.{stem}"));
                worst_logit = worst_logit.max(max_abs_diff(&out.first_logits, &logits));
            }
        }
    }
    eprintln!("max abs diff vs PyTorch: step-0 logits {worst_logit:e}, attention {worst_attn:e}");
    assert!(worst_logit < 1e-4, "logits differ by {worst_logit}");
    assert!(worst_attn < 1e-5, "attention differs by {worst_attn}");
}

#[test]
fn feature_grid_is_ceil_of_a_sixteenth() {
    let device = Device::flex();
    let model = load_catr(&fixtures().join("catr_small_ends.pth"), &small(), &device).unwrap();
    for (stem, grid) in [
        ("wide_640x480", (14, 19)),
        ("tall_480x640", (19, 14)),
        ("odd_550x400", (14, 19)),
    ] {
        assert_eq!(model.caption(input(stem, &device), 127).grid, grid, "{stem}");
    }
}

#[test]
fn legacy_and_zip_checkpoints_agree() {
    let device = Device::flex();
    let x = input("square_300x300", &device);
    let zip = load_catr(&fixtures().join("catr_small.pth"), &small(), &device)
        .unwrap()
        .caption(x.clone(), 8);
    let legacy = load_catr(&fixtures().join("catr_small_legacy.pth"), &small(), &device)
        .unwrap()
        .caption(x, 8);
    assert_eq!(zip, legacy);
}

#[test]
fn a_bfloat16_checkpoint_loads_as_its_values_in_f32() {
    use burn::store::ModuleSnapshot;
    let device = Device::flex();
    let floats = |file: &str| -> Vec<(String, Vec<f32>)> {
        load_catr(&fixtures().join(file), &small(), &device)
            .unwrap()
            .collect(None, None, false)
            .into_iter()
            .map(|t| {
                let bytes = t.to_bytes().unwrap();
                let values = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (t.name.clone(), values)
            })
            .collect()
    };
    let reference = floats("catr_small.pth");
    let got = floats("catr_small_bf16.pth");
    assert_eq!(reference.len(), got.len());
    for ((name, want), (_, got)) in reference.iter().zip(&got) {
        let want: Vec<f32> = want
            .iter()
            .map(|v| burn::tensor::bf16::from_f32(*v).to_f32())
            .collect();
        assert!(*got == want, "{name} differs from the rounded f32 weights");
    }
}

#[test]
fn wrong_checkpoints_are_clear_errors() {
    let device = Device::flex();
    let path = fixtures().join("catr_small.pth");
    let err = load_catr(&path, &small().with_vocab_size(30522), &device).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, CaptionError::Mismatch { .. }), "{msg}");
    assert!(
        msg.contains("catr_small.pth")
            && msg.contains("word_embeddings.weight is [140, 32], expected [30522, 32]"),
        "{msg}"
    );
    let vit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vit/tests/fixtures/reduced.pth");
    let msg = load_catr(&vit, &small(), &device).unwrap_err().to_string();
    assert!(
        msg.contains("reduced.pth") && msg.contains("not a CATR checkpoint"),
        "{msg}"
    );
}

#[test]
fn basic_block_backbone_matches_pytorch() {
    // ResNet-18/34 layout (BasicBlock, output stride 32 since torchvision cannot dilate it).
    let device = Device::flex();
    let config = small()
        .with_resnet_blocks([2, 1, 1, 1])
        .with_bottleneck(false)
        .with_dilation(false);
    let model = load_catr(&fixtures().join("catr_small_basic.pth"), &config, &device).unwrap();
    let out = model.caption(input("wide_640x480", &device), 127);
    assert_eq!(out.grid, (7, 10));
    let tokens: Vec<usize> = expected_json()["wide_640x480"]["basic_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(out.tokens, tokens);
    let (_, attn) = expected_f32("basic_attn.wide_640x480");
    let diff = max_abs_diff(&out.attention.concat(), &attn);
    assert!(diff < 1e-5, "attention differs by {diff}");
    assert_eq!(
        CatrConfig::v3()
            .with_resnet_depth(18)
            .unwrap()
            .backbone_channels(),
        512
    );
    assert!(!CatrConfig::v3().with_resnet_depth(34).unwrap().dilation);
    assert_eq!(CatrConfig::v3().with_resnet_depth(101), Some(CatrConfig::v3()));
}
