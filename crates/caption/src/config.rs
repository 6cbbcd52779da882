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
}

impl CatrConfig {
    /// The published checkpoints (v1, v2, v3 share one architecture).
    pub fn v3() -> Self {
        Self::new()
    }

    /// Channels out of the backbone.
    pub fn backbone_channels(&self) -> usize {
        self.resnet_width * 8 * self.expansion()
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
