//! Everything a training run depends on, read from TOML (`configs/*.toml`) with
//! `section.key=value` overrides from the command line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VitConfig;

/// A whole run. Unknown keys are errors, so a typo cannot silently fall back to a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub augment: AugmentSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub run: RunSection,
}

/// Where the weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// From `model.weights` (a timm checkpoint), with a fresh classifier.
    Pretrained,
    /// Random, timm's initialisation.
    Scratch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Architecture preset (`vit_small_patch16_384`, ...).
    pub preset: String,
    pub num_classes: usize,
    pub init: Init,
    /// Checkpoint for `init = "pretrained"`.
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// Training and evaluation resolution; position embeddings are resampled if it differs
    /// from the preset's.
    #[serde(default)]
    pub img_size: Option<usize>,
    /// Fraction of the resized image the eval center crop keeps (the preset's by default:
    /// 0.9 at 224, 1.0 at 384).
    #[serde(default)]
    pub crop_pct: Option<f64>,
    /// Overrides of the preset for small custom models.
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default)]
    pub embed_dim: Option<usize>,
    #[serde(default)]
    pub depth: Option<usize>,
    #[serde(default)]
    pub num_heads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Folder of `{label}_{id}.jpg` training images.
    pub train: PathBuf,
    /// Folder of validation images.
    pub val: PathBuf,
    pub batch_size: usize,
    /// Decoding/augmentation threads (0: all cores).
    #[serde(default)]
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    pub random_resized_crop: bool,
    pub scale: [f64; 2],
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Brightness/contrast/saturation strength; 0 turns it off.
    pub color_jitter: f64,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self {
            random_resized_crop: true,
            scale: [0.08, 1.0],
            ratio: [0.75, 4.0 / 3.0],
            hflip: 0.5,
            color_jitter: 0.4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `torch.optim.SGD` (dampening 0, coupled L2 weight decay).
    Sgd,
    /// `torch.optim.AdamW` (decoupled weight decay).
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub name: OptimizerKind,
    /// Peak learning rate (after warm-up).
    pub lr: f64,
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    #[serde(default)]
    pub nesterov: bool,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    #[serde(default)]
    pub label_smoothing: f64,
}

fn default_momentum() -> f64 {
    0.9
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Constant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub epochs: usize,
    /// Optimizer steps of linear warm-up: step `s` (0-based) uses `lr * (s + 1) / warmup`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// After warm-up: cosine decay to `min_lr` at the last step, or constant.
    #[serde(default = "cosine")]
    pub decay: Decay,
    #[serde(default)]
    pub min_lr: f64,
}

fn cosine() -> Decay {
    Decay::Cosine
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    pub seed: u64,
    /// Evaluate on the validation set every this many epochs (and after the last).
    pub eval_every: usize,
    /// Also write the resumable checkpoint every this many optimizer steps (0: epoch ends only).
    pub checkpoint_every: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            eval_every: 1,
            checkpoint_every: 0,
        }
    }
}

/// A config that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// Parses TOML `text` into `T` after applying `section.key=value` overrides (see
/// [`apply_override`]).
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, overrides: &[String]) -> Result<T, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    for o in overrides {
        apply_override(&mut doc, o)?;
    }
    toml::Value::Table(doc)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

/// Reads the run config at `path` with `overrides` into `T` and checks it with `check`;
/// errors name the file.
pub fn load_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    overrides: &[String],
    check: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, ConfigError> {
    let err = |message: String| ConfigError {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let config = parse_toml(&text, overrides).map_err(err)?;
    check(&config).map_err(err)?;
    Ok(config)
}

/// Applies `section.key=value` overrides to a parsed TOML document. Values are read as TOML
/// (`optim.lr=1e-3`, `augment.random_resized_crop=false`), or as strings if that fails.
fn apply_override(doc: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, value) = assignment
        .split_once('=')
        .ok_or_else(|| format!("override `{assignment}` is not key=value"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, sections) = parts.split_last().ok_or("empty override key")?;
    let mut table = doc;
    for section in sections {
        table = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{section}` in `{key}` is not a section"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

impl TrainConfig {
    /// Reads `path`, applies `overrides`, and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load_toml(path, overrides, Self::validate)
    }

    /// Parses TOML text with overrides.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, String> {
        let config: TrainConfig = parse_toml(text, overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.model.init == Init::Pretrained && self.model.weights.is_none() {
            return Err("model.init = \"pretrained\" needs model.weights (a timm checkpoint)".into());
        }
        if self.data.batch_size == 0 || self.optim.grad_accum == 0 || self.schedule.epochs == 0 {
            return Err("data.batch_size, optim.grad_accum and schedule.epochs must be at least 1".into());
        }
        if self.optim.lr.is_nan() || self.optim.lr <= 0.0 {
            return Err("optim.lr must be positive".into());
        }
        if !(0.0..1.0).contains(&self.optim.label_smoothing) {
            return Err("optim.label_smoothing must be in [0, 1)".into());
        }
        self.vit_config().map(|_| ())
    }

    /// The architecture: the preset with this config's overrides.
    pub fn vit_config(&self) -> Result<VitConfig, String> {
        let m = &self.model;
        let mut c = VitConfig::preset(&m.preset)
            .ok_or_else(|| {
                format!(
                    "unknown model.preset `{}`; known: {}",
                    m.preset,
                    crate::PRESETS.join(", ")
                )
            })?
            .with_num_classes(m.num_classes);
        if let Some(s) = m.img_size {
            c = c.with_img_size([s, s]);
        }
        if let Some(p) = m.crop_pct {
            c = c.with_crop_pct(p);
        }
        if let Some(p) = m.patch_size {
            c = c.with_patch_size(p);
        }
        if let Some(d) = m.embed_dim {
            c = c.with_embed_dim(d);
        }
        if let Some(d) = m.depth {
            c = c.with_depth(d);
        }
        if let Some(h) = m.num_heads {
            c = c.with_num_heads(h);
        }
        if c.embed_dim % c.num_heads != 0 || c.img_size[0] % c.patch_size != 0 {
            return Err(format!(
                "model: embed_dim {} must divide by num_heads {}, img_size {} by patch_size {}",
                c.embed_dim, c.num_heads, c.img_size[0], c.patch_size
            ));
        }
        Ok(c)
    }

    /// The run's settings as TOML, as written to `config.toml` in the run folder.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
preset = "vit_tiny_patch16_224"
num_classes = 6
init = "scratch"
img_size = 64
[data]
train = "synth/train"
val = "synth/val"
batch_size = 16
[optim]
name = "sgd"
lr = 0.01
[schedule]
epochs = 3
"#;

    #[test]
    fn defaults_overrides_and_round_trip() {
        let c = TrainConfig::parse(
            MINIMAL,
            &[
                "optim.lr=0.05".into(),
                "augment.hflip=0.0".into(),
                "run.seed=7".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.optim.lr, 0.05);
        assert_eq!(c.optim.momentum, 0.9);
        assert_eq!(c.augment.hflip, 0.0);
        assert_eq!(c.augment.scale, [0.08, 1.0]);
        assert_eq!(c.run.seed, 7);
        assert_eq!(c.schedule.decay, Decay::Cosine);
        assert_eq!(c.vit_config().unwrap().img_size, [64, 64]);
        assert_eq!(TrainConfig::parse(&c.to_toml(), &[]).unwrap(), c);
    }

    #[test]
    fn mistakes_are_reported() {
        let typo = MINIMAL.replace("lr = 0.01", "lr = 0.01\nmomentun = 0.8");
        assert!(TrainConfig::parse(&typo, &[]).unwrap_err().contains("momentun"));
        let pretrained = MINIMAL.replace("\"scratch\"", "\"pretrained\"");
        assert!(
            TrainConfig::parse(&pretrained, &[])
                .unwrap_err()
                .contains("model.weights")
        );
        assert!(
            TrainConfig::parse(MINIMAL, &["model.preset=vit_huge".into()])
                .unwrap_err()
                .contains("vit_huge")
        );
        assert!(TrainConfig::parse(MINIMAL, &["nonsense".into()]).is_err());
    }
}
