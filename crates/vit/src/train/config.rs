//! Everything a classifier's training run depends on, read from TOML (`configs/*.toml`) with
//! `section.key=value` overrides from the command line. `[optim]`, `[schedule]` and `[run]`
//! are [`gaze_train`]'s.

use std::path::{Path, PathBuf};

use gaze_train::{
    ConfigError, OptimSection, RunSection, ScheduleSection, check_number, load_toml, parse_toml,
    validate_sections,
};
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
    /// timm model name: an architecture (`vit_small_patch16_384`) or `name.tag`.
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
    /// Training images: a folder in the course layout (`{label}_{id}.jpg`) or the
    /// ImageFolder one (a folder per class), an Oxford-IIIT Pet split file
    /// (`annotations/trainval.txt`), or the Pet folder itself (its trainval split).
    pub train: PathBuf,
    /// Validation images, in any of those layouts (the Pet folder: its test split).
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

impl AugmentSection {
    /// Probabilities in [0, 1], crop scales `0 < low <= high <= 1`, aspect ratios
    /// `0 < low <= high`, a finite non-negative jitter.
    pub fn validate(&self) -> Result<(), String> {
        let closed = (false, false);
        check_number("augment.hflip", self.hflip, [0.0, 1.0], closed)?;
        check_number("augment.color_jitter", self.color_jitter, [0.0, 1.0], closed)?;
        check_number("augment.scale[0]", self.scale[0], [0.0, 1.0], (true, false))?;
        check_number("augment.scale[1]", self.scale[1], [self.scale[0], 1.0], closed)?;
        check_number("augment.ratio[0]", self.ratio[0], [0.0, 100.0], (true, false))?;
        check_number("augment.ratio[1]", self.ratio[1], [self.ratio[0], 100.0], closed)
    }
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
        if self.data.batch_size == 0 {
            return Err("data.batch_size = 0; it must be at least 1".into());
        }
        validate_sections(&self.optim, &self.schedule)?;
        self.augment.validate()?;
        self.vit_config().map(|_| ())
    }

    /// The architecture: the preset with this config's overrides.
    pub fn vit_config(&self) -> Result<VitConfig, String> {
        let m = &self.model;
        let mut c = VitConfig::preset(&m.preset)
            .map_err(|e| format!("model.preset: {e}"))?
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
        c.validate().map_err(|e| format!("model: {e}"))?;
        if !c.img_size[0].is_multiple_of(c.patch_size) {
            return Err(format!(
                "model: img_size {} must divide by patch_size {}",
                c.img_size[0], c.patch_size
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
    use gaze_train::Decay;

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
