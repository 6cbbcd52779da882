//! The parts of a run's TOML config that every model's training shares (`[optim]`,
//! `[schedule]`, `[run]`), and reading a config with `section.key=value` overrides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
