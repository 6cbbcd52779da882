use burn::config::Config;

/// CATR's architecture. Defaults are the published v1/v2/v3 model (`configuration.Config`).
#[derive(Config, Debug, PartialEq)]
pub struct CatrConfig {
    /// Bottleneck blocks per ResNet stage: `[3, 4, 6, 3]` is ResNet-50, `[3, 4, 23, 3]` ResNet-101.
    #[config(default = "[3, 4, 23, 3]")]
    pub resnet_blocks: [usize; 4],
    /// Width of the first stage (64 in torchvision); stages double it, bottleneck blocks
    /// expand it 4x.
    #[config(default = 64)]
    pub resnet_width: usize,
    /// Bottleneck blocks (ResNet-50/101) or basic blocks (ResNet-18/34, which torchvision
    /// cannot dilate).
    #[config(default = true)]
    pub bottleneck: bool,
    /// Dilate the last stage instead of striding it (output stride 16, not 32).
    #[config(default = true)]
    pub dilation: bool,
    /// Transformer width.
    #[config(default = 256)]
    pub hidden_dim: usize,
    #[config(default = 8)]
    pub nheads: usize,
    #[config(default = 6)]
    pub enc_layers: usize,
    #[config(default = 6)]
    pub dec_layers: usize,
    #[config(default = 2048)]
    pub dim_feedforward: usize,
    /// Word pieces (bert-base-uncased: 30522).
    #[config(default = 30522)]
    pub vocab_size: usize,
    /// Caption template length.
    #[config(default = 128)]
    pub max_position_embeddings: usize,
    /// Epsilon of the decoder-embedding LayerNorm (every other LayerNorm uses 1e-5).
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Preprocessing: the longer image side is scaled to this many pixels (`under_max`).
    #[config(default = 299)]
    pub max_dim: usize,
}

impl CatrConfig {
    /// The published checkpoints (v1, v2, v3 share one architecture).
    pub fn v3() -> Self {
        Self::new()
    }

    /// Fields of `given` (a JSON object) over the published v3 model; an unknown field is an
    /// error, so a typo cannot silently fall back to v3's value.
    pub fn from_partial(given: &serde_json::Value) -> Result<Self, String> {
        let mut merged = serde_json::to_value(Self::v3()).expect("config serialises");
        let fields = given
            .as_object()
            .ok_or("expected a JSON object of CatrConfig fields")?;
        for (key, value) in fields {
            let slot = merged
                .get_mut(key)
                .ok_or_else(|| format!("unknown CatrConfig field `{key}`"))?;
            *slot = value.clone();
        }
        serde_json::from_value(merged).map_err(|e| e.to_string())
    }

    /// Checks every field before anything is allocated: sizes positive, `hidden_dim`
    /// divisible by `nheads`, a finite epsilon, and the estimated memory of the weights and
    /// of one image within [`MAX_MODEL_BYTES`](gaze_nn::checkpoint::MAX_MODEL_BYTES).
    pub fn validate(&self) -> Result<(), String> {
        gaze_nn::checkpoint::check_positive(&[
            ("resnet_width", self.resnet_width),
            ("hidden_dim", self.hidden_dim),
            ("nheads", self.nheads),
            ("dec_layers", self.dec_layers),
            ("dim_feedforward", self.dim_feedforward),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("max_dim", self.max_dim),
        ])?;
        if let Some(stage) = self.resnet_blocks.iter().position(|b| *b == 0) {
            return Err(format!("resnet_blocks[{stage}] is 0; every stage needs a block"));
        }
        if !self.hidden_dim.is_multiple_of(self.nheads) {
            return Err(format!(
                "hidden_dim {} does not divide into nheads {}",
                self.hidden_dim, self.nheads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps is {}; it must be a positive number",
                self.layer_norm_eps
            ));
        }
        gaze_nn::checkpoint::check_model_bytes(self.estimated_bytes())
    }

    /// Bytes of the f32 weights plus one image's largest activations, in floating point so
    /// that no size overflows.
    fn estimated_bytes(&self) -> f64 {
        let (w, e) = (self.resnet_width as f64, self.expansion() as f64);
        let backbone: f64 = self
            .resnet_blocks
            .iter()
            .enumerate()
            .map(|(stage, blocks)| {
                let width = w * 2f64.powi(stage as i32);
                *blocks as f64 * (9.0 + 2.0 * e) * width * width * e
            })
            .sum();
        let (h, ff) = (self.hidden_dim as f64, self.dim_feedforward as f64);
        let layers = (self.enc_layers + 2 * self.dec_layers) as f64;
        let transformer = layers * (4.0 * h * h + 2.0 * h * ff)
            + (self.vocab_size + self.max_position_embeddings) as f64 * h;
        let pixels = (self.max_dim * self.max_dim) as f64;
        let cells = pixels / (self.output_stride() * self.output_stride()) as f64;
        let activations = pixels * w * e + cells * cells * self.nheads as f64;
        4.0 * (backbone + transformer + activations)
    }

    /// Channels out of the backbone.
    pub fn backbone_channels(&self) -> usize {
        self.resnet_width * 8 * self.expansion()
    }

    /// Pixels per feature cell: 16 with the dilated last stage, else 32.
    pub fn output_stride(&self) -> usize {
        if self.dilation { 16 } else { 32 }
    }

    /// Output channels of a block per unit of width.
    pub fn expansion(&self) -> usize {
        if self.bottleneck { 4 } else { 1 }
    }

    /// The v3 model with another torchvision ResNet (18, 34, 50 or 101); 18 and 34 are not
    /// dilated, as torchvision's BasicBlock refuses dilation.
    pub fn with_resnet_depth(self, depth: usize) -> Option<Self> {
        let (blocks, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            101 => ([3, 4, 23, 3], true),
            _ => return None,
        };
        let dilation = bottleneck && self.dilation;
        Some(
            self.with_resnet_blocks(blocks)
                .with_bottleneck(bottleneck)
                .with_dilation(dilation),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_configs_keep_v3_for_the_rest() {
        let small = CatrConfig::from_partial(&serde_json::json!({"hidden_dim": 64, "max_dim": 96})).unwrap();
        assert_eq!((small.hidden_dim, small.max_dim, small.enc_layers), (64, 96, 6));
        let typo = CatrConfig::from_partial(&serde_json::json!({"hidden": 64})).unwrap_err();
        assert!(typo.contains("`hidden`"), "{typo}");
        assert!(CatrConfig::from_partial(&serde_json::json!({"nheads": "eight"})).is_err());
    }

    #[test]
    fn architectures_are_validated_before_allocation() {
        assert_eq!(CatrConfig::v3().validate(), Ok(()));
        let refused = [
            (CatrConfig::new().with_nheads(0), "nheads is 0"),
            (CatrConfig::new().with_nheads(7), "nheads 7"),
            (
                CatrConfig::new().with_resnet_blocks([3, 0, 6, 3]),
                "resnet_blocks[1]",
            ),
            (CatrConfig::new().with_max_dim(100_000), "GiB"),
            (CatrConfig::new().with_dec_layers(100_000), "GiB"),
            (
                CatrConfig::new().with_layer_norm_eps(f64::INFINITY),
                "layer_norm_eps",
            ),
        ];
        for (config, why) in refused {
            let err = config.validate().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
