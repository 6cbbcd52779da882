//! A captioner's training run, read from TOML (`configs/caption/*.toml`); `[optim]`,
//! `[schedule]` and `[run]` are [`gaze_train`]'s.

use std::path::{Path, PathBuf};

use gaze_train::{ConfigError, OptimSection, RunSection, ScheduleSection, load_toml};
use serde::{Deserialize, Serialize};

use crate::CatrConfig;

/// A captioner training run. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionTrainConfig {
    /// Fields of [`CatrConfig`]; the rest are the published v3 model's.
    pub model: serde_json::Map<String, serde_json::Value>,
    pub data: CaptionDataSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionDataSection {
    /// A `gaze synth --captions` folder.
    pub dir: PathBuf,
    pub batch_size: usize,
}

impl CaptionTrainConfig {
    /// Reads `path` and applies `section.key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load_toml(path, overrides, Self::validate)
    }

    fn validate(&self) -> Result<(), String> {
        self.catr()?;
        if self.data.batch_size == 0 || self.optim.grad_accum != 1 {
            return Err("data.batch_size must be at least 1 and optim.grad_accum 1".into());
        }
        if self.run.precision != gaze_nn::ops::Precision::Fp32 {
            return Err(format!(
                "run.precision = \"{}\": the captioner trains in fp32 only; remove the key",
                self.run.precision
            ));
        }
        gaze_train::validate_sections(&self.optim, &self.schedule)
    }

    /// The architecture: v3 with `model`'s fields.
    pub fn catr(&self) -> Result<CatrConfig, String> {
        let config = CatrConfig::from_partial(&serde_json::Value::Object(self.model.clone()))
            .map_err(|e| format!("[model]: {e}"))?;
        config.validate().map_err(|e| format!("[model]: {e}"))?;
        Ok(config)
    }
}
