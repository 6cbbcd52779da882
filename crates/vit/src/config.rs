use burn::config::Config;
use gaze_data::EvalTransform;

/// Architecture of a [`VisionTransformer`](crate::VisionTransformer), and the preprocessing
/// its weights expect. Defaults are timm's `vit_small_patch16_384`.
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Input height and width in pixels; the model accepts exactly this size.
    #[config(default = "[384, 384]")]
    pub img_size: [usize; 2],
    /// Side of the square patches.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_chans: usize,
    /// Classifier outputs; 0 would mean no head, which gaze does not support.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Token width.
    #[config(default = 384)]
    pub embed_dim: usize,
    /// Number of transformer blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads per block; `embed_dim` must divide evenly.
    #[config(default = 6)]
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Whether the fused q/k/v projection has a bias.
    #[config(default = true)]
    pub qkv_bias: bool,
    /// LayerNorm epsilon (timm ViTs use 1e-6, not PyTorch's 1e-5).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Fraction of the resized image kept by the center crop (timm `crop_pct`).
    #[config(default = 1.0)]
    pub crop_pct: f64,
    /// Normalisation mean per channel.
    #[config(default = "[0.5, 0.5, 0.5]")]
    pub mean: [f32; 3],
    /// Normalisation standard deviation per channel.
    #[config(default = "[0.5, 0.5, 0.5]")]
    pub std: [f32; 3],
}

/// Names accepted by [`VitConfig::preset`], as timm spells them.
pub const PRESETS: [&str; 6] = [
    "vit_tiny_patch16_224",
    "vit_tiny_patch16_384",
    "vit_small_patch16_224",
    "vit_small_patch16_384",
    "vit_base_patch16_224",
    "vit_base_patch16_384",
];

impl VitConfig {
    /// A timm architecture by name, with the data config of its AugReg weights
    /// (bicubic, mean = std = 0.5; crop_pct 0.9 at 224 and 1.0 at 384).
    pub fn preset(name: &str) -> Option<Self> {
        let (embed_dim, num_heads) = match name.split('_').nth(1)? {
            "tiny" => (192, 3),
            "small" => (384, 6),
            "base" => (768, 12),
            _ => return None,
        };
        let size = match name.strip_prefix("vit_")?.split_once("_patch16_")?.1 {
            "224" => 224,
            "384" => 384,
            _ => return None,
        };
        let crop_pct = if size == 224 { 0.9 } else { 1.0 };
        Some(
            Self::new()
                .with_img_size([size, size])
                .with_embed_dim(embed_dim)
                .with_num_heads(num_heads)
                .with_crop_pct(crop_pct),
        )
    }

    /// Patch grid `(rows, cols)`.
    pub fn grid(&self) -> [usize; 2] {
        [
            self.img_size[0] / self.patch_size,
            self.img_size[1] / self.patch_size,
        ]
    }

    /// Tokens per image: one per patch plus the class token.
    pub fn num_tokens(&self) -> usize {
        let [gh, gw] = self.grid();
        gh * gw + 1
    }

    /// The evaluation transform for square inputs of this model.
    pub fn eval_transform(&self) -> EvalTransform {
        let mut t = EvalTransform::inception(self.img_size[0] as u32, self.crop_pct);
        t.mean = self.mean;
        t.std = self.std;
        t
    }

    /// The same architecture with another number of classes.
    pub fn with_classes(&self, num_classes: usize) -> Self {
        self.clone().with_num_classes(num_classes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve() {
        for name in PRESETS {
            let c = VitConfig::preset(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.embed_dim % c.num_heads, 0);
        }
        let s = VitConfig::preset("vit_small_patch16_384").unwrap();
        assert_eq!(s, VitConfig::new());
        assert_eq!(s.grid(), [24, 24]);
        assert_eq!(s.num_tokens(), 577);
        assert_eq!(VitConfig::preset("vit_base_patch16_224").unwrap().crop_pct, 0.9);
        assert!(VitConfig::preset("vit_huge_patch14_224").is_none());
        assert!(VitConfig::preset("resnet50").is_none());
    }
}
