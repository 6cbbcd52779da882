//! Parity with timm 1.0.20 on the fixtures written by `tools/gen_vit_fixtures.py`.

use std::path::PathBuf;

use burn::store::ModuleSnapshot;
use burn::tensor::{Device, Tensor, TensorData};
use gaze_data::{EvalTransform, load_rgb};
use gaze_nn::checkpoint::{Checkpoint, LoadError, state_dict_shapes};
use gaze_nn::ops::Precision;
use gaze_vit::{
    HeadInit, VisionTransformer, VitConfig, load_vit, resample_pos_embed, save_vit, stored_vit_config,
};
use safetensors::SafeTensors;

fn fixtures() -> PathBuf {
    gaze_nn::test_support::fixtures(env!("CARGO_MANIFEST_DIR"))
}

struct Expected(Vec<u8>);

impl Expected {
    fn load() -> Self {
        Expected(std::fs::read(fixtures().join("expected.safetensors")).unwrap())
    }
    fn get(&self, key: &str) -> (Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let view = st.tensor(key).unwrap_or_else(|_| panic!("fixture has no {key}"));
        (view.shape().to_vec(), view.data().to_vec())
    }
    fn f32(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, bytes) = self.get(key);
        (
            shape,
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }
}

const STEMS: [&str; 7] = [
    "rgb_500x375",
    "rgb_375x500",
    "rgb_384x384",
    "rgb_640x427",
    "gray_300x200",
    "palette_200x260",
    "rgba_97x61",
];

fn reduced_config() -> VitConfig {
    VitConfig::new()
        .with_img_size([64, 64])
        .with_embed_dim(48)
        .with_depth(2)
        .with_num_heads(3)
}

fn load_reduced(file: &str) -> VisionTransformer {
    load_reduced_on(file, &Device::flex())
}

fn load_reduced_on(file: &str, device: &Device) -> VisionTransformer {
    let (model, config) = load_vit(
        &fixtures().join(file),
        &reduced_config(),
        HeadInit::FromCheckpoint,
        device,
    )
    .unwrap();
    assert_eq!(config.num_classes, 5, "class count comes from the file");
    model
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn preprocessing_is_bit_exact_with_timm() {
    let expected = Expected::load();
    for stem in STEMS {
        let image = load_rgb(&fixtures().join(format!("images/{stem}.png"))).unwrap();
        let crop = EvalTransform::inception(384, 1.0).resize_and_crop(&image);
        let (shape, want) = expected.get(&format!("crop384.{stem}"));
        assert_eq!(shape, [384, 384, 3]);
        let differing = crop.as_raw().iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "{stem}: {differing} bytes differ from timm's resize+crop"
        );

        let input = EvalTransform::inception(64, 1.0).apply(&image);
        let (_, want) = expected.f32(&format!("input64.{stem}"));
        assert!(
            input.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{stem}: 64px tensor"
        );
    }
}

#[test]
fn logits_and_attention_match_timm() {
    logits_and_attention_match_timm_on(&Device::flex());
}

#[test]
fn wgpu_logits_and_attention_match_timm() {
    if let Some(device) = gaze_nn::test_support::wgpu_device() {
        logits_and_attention_match_timm_on(&device);
    }
}

fn logits_and_attention_match_timm_on(device: &Device) {
    let expected = Expected::load();
    let model = load_reduced_on("reduced.safetensors", device);
    let mut worst_logit = 0f32;
    let mut worst_attn = 0f32;
    for stem in STEMS {
        let (shape, input) = expected.f32(&format!("input64.{stem}"));
        let batch = Tensor::<4>::from_data(TensorData::new(input, [1, shape[0], shape[1], shape[2]]), device);
        let out = model.forward_with_attention(batch.clone());
        let (_, want) = expected.f32(&format!("logits.{stem}"));
        worst_logit = worst_logit.max(max_abs_diff(&to_vec(out.logits), &want));
        // The fast path: fused attention, the last block for the class token alone.
        worst_logit = worst_logit.max(max_abs_diff(&to_vec(model.forward(batch.clone())), &want));
        let attn = out.attentions.last().unwrap().clone();
        assert_eq!(attn.dims(), [1, 3, 17, 17]);
        let (_, want) = expected.f32(&format!("attn_last.{stem}"));
        worst_attn = worst_attn.max(max_abs_diff(
            &attn.into_data().try_to_vec::<f32>().unwrap(),
            &want,
        ));
        // Attention must be far from uniform, or this test would not see indexing bugs.
        assert!(
            want.iter().cloned().fold(0.0, f32::max) > 0.3,
            "{stem}: fixture attention is flat"
        );
    }
    eprintln!("max abs diff vs timm: logits {worst_logit:e}, attention {worst_attn:e}");
    assert!(worst_logit < 1e-4, "logits differ from timm by {worst_logit}");
    assert!(worst_attn < 1e-6, "attention differs from timm by {worst_attn}");
}

#[test]
fn bf16_products_keep_timms_top1_and_logits_within_5e_2() {
    let expected = Expected::load();
    let device = Device::flex();
    let model = load_reduced("reduced.safetensors").with_precision(Precision::Bf16);
    let (mut worst, mut smallest_margin) = (0f32, f32::INFINITY);
    for stem in STEMS {
        let (shape, input) = expected.f32(&format!("input64.{stem}"));
        let batch =
            Tensor::<4>::from_data(TensorData::new(input, [1, shape[0], shape[1], shape[2]]), &device);
        let (_, want) = expected.f32(&format!("logits.{stem}"));
        let got = to_vec(model.forward(batch));
        // bf16 must change the logits, or this test would not see the path.
        let diff = max_abs_diff(&got, &want);
        assert!(diff > 1e-5, "{stem}: bf16 logits equal fp32's");
        worst = worst.max(diff);
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmax(&got), argmax(&want), "{stem}: top-1 changed");
        let mut sorted = want.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        smallest_margin = smallest_margin.min(sorted[0] - sorted[1]);
    }
    eprintln!("bf16 vs timm fp32: max abs logit diff {worst:e}; smallest top-1 margin {smallest_margin:e}");
    assert!(worst < 5e-2, "bf16 logits differ from fp32 by {worst}");
}

#[test]
fn pth_zip_legacy_nested_and_safetensors_give_identical_outputs() {
    let expected = Expected::load();
    let (shape, input) = expected.f32("input64.rgb_640x427");
    let device = Device::flex();
    let batch = Tensor::<4>::from_data(TensorData::new(input, [1, shape[0], shape[1], shape[2]]), &device);
    let reference = to_vec(load_reduced("reduced.safetensors").forward(batch.clone()));
    for file in ["reduced.pth", "reduced_nested.pth"] {
        let logits = to_vec(load_reduced(file).forward(batch.clone()));
        assert_eq!(logits, reference, "{file}");
    }
}

fn parameters(model: &VisionTransformer) -> Vec<(String, Vec<u8>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

#[test]
fn half_bfloat16_and_double_checkpoints_load_as_their_values_in_f32() {
    let floats = |model: &VisionTransformer| -> Vec<(String, Vec<f32>)> {
        parameters(model)
            .into_iter()
            .map(|(name, bytes)| {
                let values = bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, values)
            })
            .collect()
    };
    let reference = floats(&load_reduced("reduced.safetensors"));
    let as_f16 = |v: f32| burn::tensor::f16::from_f32(v).to_f32();
    let as_bf16 = |v: f32| burn::tensor::bf16::from_f32(v).to_f32();
    let rounding: [(&str, &dyn Fn(f32) -> f32); 3] = [("f16", &as_f16), ("bf16", &as_bf16), ("f64", &|v| v)];
    for (dtype, round) in rounding {
        for format in ["safetensors", "pth"] {
            let file = format!("reduced_{dtype}.{format}");
            let got = floats(&load_reduced(&file));
            for ((name, want), (got_name, got)) in reference.iter().zip(&got) {
                assert_eq!(name, got_name);
                let want: Vec<f32> = want.iter().map(|v| round(*v)).collect();
                assert!(
                    *got == want,
                    "{file}: {name} differs from the rounded f32 weights"
                );
            }
        }
    }
}

#[test]
fn save_then_load_is_exact_and_keeps_the_config() {
    let model = load_reduced("reduced.pth");
    let dir = std::env::temp_dir().join(format!("gaze-vit-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    save_vit(&model, &reduced_config().with_num_classes(5), &path).unwrap();

    let checkpoint = Checkpoint::open(&path).unwrap();
    assert_eq!(
        stored_vit_config(&checkpoint).unwrap(),
        Some(reduced_config().with_num_classes(5))
    );
    // Same keys and PyTorch shapes as the timm file: timm can load it with strict=True.
    let timm = Checkpoint::open(&fixtures().join("reduced.safetensors")).unwrap();
    assert_eq!(checkpoint.shapes, timm.shapes);

    let (reloaded, _) = gaze_vit::load_pretrained(&path, None, None, &Device::flex()).unwrap();
    assert_eq!(parameters(&reloaded), parameters(&model));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fresh_head_keeps_the_body_and_replaces_the_classifier() {
    let path = fixtures().join("reduced.safetensors");
    let (model, config) = load_vit(
        &path,
        &reduced_config(),
        HeadInit::Fresh { num_classes: 37 },
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(config.num_classes, 37);
    assert_eq!(model.num_classes(), 37);
    let reference = load_reduced("reduced.safetensors");
    let body = |m: &VisionTransformer| {
        parameters(m)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("head."))
            .collect::<Vec<_>>()
    };
    assert_eq!(body(&model), body(&reference));
}

#[test]
fn pos_embed_resampling_matches_timm() {
    let expected = Expected::load();
    let model = load_reduced("reduced.safetensors");
    for (h, w) in [(6, 6), (3, 5), (2, 2), (4, 4), (24, 32)] {
        let out = resample_pos_embed(model.pos_embed.val(), [4, 4], [h, w], 1);
        let (shape, want) = expected.f32(&format!("posemb.{h}x{w}"));
        assert_eq!(out.dims().to_vec(), shape);
        let diff = max_abs_diff(&out.into_data().try_to_vec::<f32>().unwrap(), &want);
        assert!(diff < 1e-6, "{h}x{w}: {diff}");
    }
}

#[test]
fn checkpoint_of_another_size_is_one_clear_error() {
    let path = fixtures().join("reduced.safetensors");
    let err = load_vit(
        &path,
        &VitConfig::new(),
        HeadInit::FromCheckpoint,
        &Device::flex(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{msg}");
    assert!(msg.contains("reduced.safetensors"), "{msg}");
    assert!(msg.contains("2 layers under blocks., expected 12"), "{msg}");
    assert!(
        msg.contains("blocks.0.attn.qkv.weight is [144, 48], expected [1152, 384]"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");
}

#[test]
fn files_that_are_not_checkpoints_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("gaze-vit-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("weights.pth");
    std::fs::write(&text, "not a checkpoint at all").unwrap();
    let truncated = dir.join("weights.safetensors");
    let bytes = std::fs::read(fixtures().join("reduced.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..200]).unwrap();
    for path in [text, truncated, dir.join("missing.safetensors")] {
        let err = load_vit(
            &path,
            &reduced_config(),
            HeadInit::FromCheckpoint,
            &Device::flex(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn expected_state_dict_is_timms() {
    let model = VitConfig::new().with_num_classes(37).init(&Device::flex());
    let shapes = state_dict_shapes(&model);
    assert_eq!(shapes.len(), 152);
    assert_eq!(shapes["blocks.3.attn.qkv.weight"], [1152, 384]);
    assert_eq!(shapes["blocks.11.mlp.fc1.weight"], [1536, 384]);
    assert_eq!(shapes["patch_embed.proj.weight"], [384, 3, 16, 16]);
    assert_eq!(shapes["head.weight"], [37, 384]);
    assert_eq!(shapes["norm.weight"], [384]);
    let params: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, 21_825_829);
}

fn fnv1a64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xCBF2_9CE4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    });
    format!("{h:016x}")
}

#[test]
fn jpeg_decoding_and_preprocessing_are_bit_exact_with_pillow() {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("jpeg_pixels.json")).unwrap()).unwrap();
    let expected = json.as_object().unwrap();
    assert_eq!(expected.len(), 4);
    for (file, want) in expected {
        let image = load_rgb(&fixtures().join("images").join(file)).unwrap();
        assert_eq!(
            fnv1a64(image.as_raw()),
            want["decoded"].as_str().unwrap(),
            "{file}: decoded pixels"
        );
        let crop = EvalTransform::inception(384, 1.0).resize_and_crop(&image);
        assert_eq!(
            fnv1a64(crop.as_raw()),
            want["crop384"].as_str().unwrap(),
            "{file}: resize + crop"
        );
    }
}
