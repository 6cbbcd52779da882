//! Helpers shared by the CLI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use gaze_nn::checkpoint::state_dict_shapes;
use gaze_vit::VitConfig;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

pub const FULL_SIZE: [&str; 4] = ["rgb_500x375", "rgb_375x500", "rgb_384x384", "rgb_640x427"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vit/tests/fixtures")
}

pub fn catr_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../caption/tests/fixtures")
}

/// The architecture of `catr_small*.pth` (tools/gen_catr_fixtures.py) as `gaze caption --arch` takes it.
pub const CATR_SMALL_ARCH: &str = r#"{"resnet_blocks":[1,1,2,2],"resnet_width":8,"dilation":true,"hidden_dim":32,"nheads":4,
"enc_layers":2,"dec_layers":2,"dim_feedforward":64,"vocab_size":140,"max_position_embeddings":128,"layer_norm_eps":1e-12}"#;

/// A ViT small enough to train in seconds on `gaze synth --classes 3 --size 32` data.
pub const TINY_VIT_CONFIG: &str = r#"
[model]
preset = "vit_tiny_patch16_224"
num_classes = 3
init = "scratch"
img_size = 32
patch_size = 8
embed_dim = 48
depth = 2
num_heads = 3
[data]
train = "unused/train"
val = "unused/val"
batch_size = 16
[optim]
name = "adamw"
lr = 3e-3
[schedule]
epochs = 2
warmup_steps = 2
"#;

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gaze-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn gaze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(args)
        .output()
        .unwrap()
}

pub fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0x811C_9DC5u64, |h, b| {
        ((h ^ b as u64) * 0x0100_0193) & 0xFFFF_FFFF
    })
}

/// The deterministic weights of `formula_value` in tools/gen_vit_fixtures.py, value for value.
pub fn formula_value(name: &str, shape: &[usize]) -> Vec<f32> {
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

pub fn write_formula_vit_small(path: &Path) {
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

pub fn expected_f32(key: &str) -> Vec<f32> {
    read_f32(&fixtures().join("expected.safetensors"), key)
}

/// Tensor `key` of a float32 safetensors file.
pub fn read_f32(file: &Path, key: &str) -> Vec<f32> {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensor(key)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn predictions(json: &Path) -> Vec<(String, usize, Vec<f32>)> {
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

/// The reduced fixture ViT re-saved by gaze, so its architecture travels in the metadata.
pub fn reduced_gaze_weights(dir: &Path) -> PathBuf {
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
    weights
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn hashed(n: usize, seed: u64) -> impl Iterator<Item = f64> {
    (0..n as u64).map(move |i| {
        let mut x = (i * 2_654_435_761 + seed) & 0xFFFF_FFFF;
        x ^= x >> 15;
        x = (x * 0x2C1B_3C6D) & 0xFFFF_FFFF;
        x ^= x >> 12;
        x as f64 / 4_294_967_296.0 - 0.5
    })
}

/// `catr_formula_value` of tools/gen_catr_full.py, value for value.
pub fn catr_formula_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape[1..].iter().product();
    let gain = if shape.len() == 4 { 6.0 } else { 3.0 };
    hashed(n, fnv1a(name))
        .map(|h| {
            let v = if name.ends_with("running_var") {
                1.0 + 0.4 * h
            } else if name.ends_with("running_mean") {
                0.1 * h
            } else if name.ends_with("bn3.weight") {
                0.2 + 0.1 * h
            } else if name.ends_with("weight") && (name.contains(".bn") || name.contains("downsample.1")) {
                1.0 + 0.2 * h
            } else if name.ends_with("bias") {
                0.1 * h
            } else if name.to_lowercase().contains("norm") {
                1.0 + 0.2 * h
            } else if name.contains("embeddings") {
                0.5 * h
            } else {
                h * 2.0 * (gain / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

/// Writes `tensors` (name, shape, f32 values) as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// `gaze ARGS` with `GAZE_FAULT_AT=fault`: the process aborts before its `fault`th rename or
/// removal, as a kill would.
pub fn gaze_killed_at(args: &[&str], fault: Option<usize>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gaze"));
    command.args(args);
    if let Some(step) = fault {
        command.env("GAZE_FAULT_AT", step.to_string());
    }
    command.output().unwrap()
}

/// The tensors of a safetensors file, by name, as bytes.
pub fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    out.sort();
    out
}

/// `metrics.csv` of a run folder without the timing columns (images/s, seconds).
pub fn metrics_without_timing(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
        .collect()
}

/// Runs a training command into a fresh folder killed before its `n`th rename or removal, for
/// every `n` until a run finishes unkilled; after each kill, resumes (once also killed again
/// at each of the resumed run's first `second_kills` steps, its clean-up among them) and
/// then resumes to the end. `train(out, extra, fault)` runs the command; `same(out)` asserts
/// the finished folder equals the uninterrupted run's. Returns the number of steps.
pub fn kill_at_every_step(
    scratch: &Path,
    second_kills: usize,
    train: impl Fn(&Path, &[&str], Option<usize>) -> Output,
    same: impl Fn(&Path),
) -> usize {
    let killed = |out: &Output| out.status.code().is_none() || out.status.code() == Some(134);
    for n in 1.. {
        let out = scratch.join(format!("kill-{n}"));
        let first = train(&out, &[], Some(n));
        if first.status.success() {
            same(&out);
            std::fs::remove_dir_all(&out).unwrap();
            return n - 1;
        }
        assert!(
            killed(&first),
            "step {n}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        for m in 1..=second_kills {
            let again = train(&out, &["--resume"], Some(m));
            if again.status.success() {
                break;
            }
            assert!(
                killed(&again),
                "steps {n}, {m}: {}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        let last = train(&out, &["--resume"], None);
        assert!(
            last.status.success(),
            "killed at step {n}: {}",
            String::from_utf8_lossy(&last.stderr)
        );
        same(&out);
        std::fs::remove_dir_all(&out).unwrap();
    }
    unreachable!()
}
