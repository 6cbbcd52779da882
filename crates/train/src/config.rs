//! The parts of a run's TOML config that every model's training shares (`[optim]`,
//! `[schedule]`, `[run]`), and reading a config with `section.key=value` overrides.

use std::path::{Path, PathBuf};

use gaze_nn::ops::Precision;
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
    /// How the model's matrix products run: "fp32", or "bf16" (operands rounded to bf16, f32
    /// accumulation; master weights, optimiser state and the loss stay f32).
    pub precision: Precision,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            seed: 0,
            eval_every: 1,
            checkpoint_every: 0,
            precision: Precision::Fp32,
        }
    }
}

/// `key`'s `value` is a finite number in `[low, high]` (an end is open where `open` says
/// so: `(low open, high open)`); else the error names the key, the value and the range.
pub fn check_number(key: &str, value: f64, [low, high]: [f64; 2], open: (bool, bool)) -> Result<(), String> {
    let above = if open.0 { value > low } else { value >= low };
    let below = if open.1 { value < high } else { value <= high };
    if value.is_finite() && above && below {
        return Ok(());
    }
    let (l, r) = (if open.0 { "(" } else { "[" }, if open.1 { ")" } else { "]" });
    Err(format!("{key} = {value:?} is outside {l}{low}, {high}{r}"))
}

/// The learning rates a config may ask for: above 10 no schedule trains.
const MAX_LR: f64 = 10.0;

impl OptimSection {
    /// Every number in range and finite.
    pub fn validate(&self) -> Result<(), String> {
        let closed = (false, false);
        check_number("optim.lr", self.lr, [0.0, MAX_LR], (true, false))?;
        check_number("optim.momentum", self.momentum, [0.0, 1.0], (false, true))?;
        check_number("optim.weight_decay", self.weight_decay, [0.0, 1.0], closed)?;
        check_number("optim.betas[0]", self.betas[0], [0.0, 1.0], (false, true))?;
        check_number("optim.betas[1]", self.betas[1], [0.0, 1.0], (false, true))?;
        check_number("optim.eps", self.eps, [0.0, 1.0], (true, false))?;
        check_number(
            "optim.label_smoothing",
            self.label_smoothing,
            [0.0, 1.0],
            (false, true),
        )?;
        if let Some(norm) = self.clip_grad_norm {
            check_number("optim.clip_grad_norm", norm, [0.0, f64::MAX], (true, false))?;
        }
        if self.grad_accum == 0 {
            return Err("optim.grad_accum = 0; it must be at least 1".into());
        }
        Ok(())
    }
}

impl ScheduleSection {
    /// At least one epoch; `min_lr` finite, from 0 up to the peak `lr`.
    pub fn validate(&self, lr: f64) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("schedule.epochs = 0; it must be at least 1".into());
        }
        check_number("schedule.min_lr", self.min_lr, [0.0, lr], (false, false))
    }
}

/// Checks the sections every run shares.
pub fn validate_sections(optim: &OptimSection, schedule: &ScheduleSection) -> Result<(), String> {
    optim.validate()?;
    schedule.validate(optim.lr)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn optim(lr: f64) -> OptimSection {
        parse_toml(&format!("name = \"sgd\"\nlr = {lr}"), &[]).unwrap()
    }

    #[test]
    fn numbers_out_of_range_or_not_finite_are_refused_by_key() {
        assert_eq!(optim(3e-4).validate(), Ok(()));
        let bad: [(&str, fn(&mut OptimSection)); 7] = [
            ("optim.lr = inf", |o| o.lr = f64::INFINITY),
            ("optim.lr = 1e30", |o| o.lr = 1e30),
            ("optim.lr = NaN", |o| o.lr = f64::NAN),
            ("optim.weight_decay = -0.1", |o| o.weight_decay = -0.1),
            ("optim.momentum = 1", |o| o.momentum = 1.0),
            ("optim.betas[1] = 1.5", |o| o.betas[1] = 1.5),
            ("optim.clip_grad_norm = 0", |o| o.clip_grad_norm = Some(0.0)),
        ];
        for (want, spoil) in bad {
            let mut o = optim(3e-4);
            spoil(&mut o);
            let err = o.validate().unwrap_err();
            assert!(err.starts_with(want), "{err}");
        }
        let schedule = |min_lr: f64| ScheduleSection {
            epochs: 1,
            warmup_steps: 0,
            decay: Decay::Cosine,
            min_lr,
        };
        assert!(schedule(1e-5).validate(3e-4).is_ok());
        assert!(
            schedule(1e-3)
                .validate(3e-4)
                .unwrap_err()
                .contains("schedule.min_lr")
        );
    }
}
