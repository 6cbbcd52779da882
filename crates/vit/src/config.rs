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
    /// Class names in label order (timm's `label_names`), when the training data had them.
    #[config(default = "None")]
    pub label_names: Option<Vec<String>>,
}

impl VitConfig {
    /// A timm model by name: an architecture (`vit_small_patch16_384`: its default pretrained
    /// tag's data config) or a full `name.tag`; the class count is the tag's. Unknown names,
    /// and preprocessing gaze does not implement, are refused with the list of known names.
    pub fn preset(name: &str) -> Result<Self, String> {
        crate::timm::find_timm_model(name)?.config()
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

    /// Checks every field before anything is allocated: sizes positive, `embed_dim` divisible
    /// by `num_heads`, the patch no larger than the image, finite preprocessing, and the
    /// estimated memory of the weights and of one image's forward pass (the bound, not each
    /// field's, so that large real models load) within
    /// [`MAX_MODEL_BYTES`](gaze_nn::checkpoint::MAX_MODEL_BYTES).
    pub fn validate(&self) -> Result<(), String> {
        gaze_nn::checkpoint::check_positive(&[
            ("img_size[0]", self.img_size[0]),
            ("img_size[1]", self.img_size[1]),
            ("patch_size", self.patch_size),
            ("in_chans", self.in_chans),
            ("num_classes", self.num_classes),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ])?;
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "embed_dim {} does not divide into num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.patch_size > self.img_size[0].min(self.img_size[1]) {
            return Err(format!(
                "patch_size {} is larger than img_size {:?}",
                self.patch_size, self.img_size
            ));
        }
        let finite_positive = [
            ("mlp_ratio", self.mlp_ratio),
            ("norm_eps", self.norm_eps),
            ("crop_pct", self.crop_pct),
        ];
        if let Some((name, v)) = finite_positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err(format!("{name} is {v}; it must be a positive number"));
        }
        if self.crop_pct > 1.0 {
            return Err(format!("crop_pct is {}; it must be at most 1", self.crop_pct));
        }
        if !(self.mean.iter().all(|m| m.is_finite()) && self.std.iter().all(|s| s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "mean {:?} and std {:?} must be finite, std positive",
                self.mean, self.std
            ));
        }
        if let Some(names) = self.label_names.as_ref().filter(|n| n.len() != self.num_classes) {
            return Err(format!(
                "{} label names for {} classes",
                names.len(),
                self.num_classes
            ));
        }
        gaze_nn::checkpoint::check_model_bytes(self.estimated_bytes())?;
        Ok(())
    }

    /// Bytes of the f32 weights plus one image's largest activations (the attention scores
    /// of all heads and the MLP's hidden tokens), computed in floating point so that no size
    /// overflows.
    fn estimated_bytes(&self) -> f64 {
        let d = self.embed_dim as f64;
        let hidden = d * self.mlp_ratio;
        let [gh, gw] = self.grid();
        let tokens = (gh * gw) as f64 + 1.0;
        let patch = (self.patch_size * self.patch_size * self.in_chans) as f64;
        let block = 4.0 * d * d + 2.0 * d * hidden + 9.0 * d + hidden;
        let weights = self.depth as f64 * block + tokens * d + patch * d + d * self.num_classes as f64;
        let activations = tokens * tokens * self.num_heads as f64 + tokens * hidden * 2.0;
        4.0 * (weights + activations)
    }

    /// Floating-point operations of one image's matrix products (a multiply-add counts two):
    /// the patch embedding, every block's projections, attention scores and weighted sums,
    /// MLP and the head. Element-wise work (softmax, GELU, layer norm) is left out, as FLOP
    /// counts usually do. `class_token_last_block`: the last block for the class token alone,
    /// as [`VisionTransformer::forward`](crate::VisionTransformer::forward) runs it (timm
    /// runs it for every token).
    pub fn forward_flops(&self, class_token_last_block: bool) -> f64 {
        let d = self.embed_dim as f64;
        let hidden = d * self.mlp_ratio;
        let tokens = self.num_tokens() as f64;
        let patches = tokens - 1.0;
        let patch_in = (self.in_chans * self.patch_size * self.patch_size) as f64;
        let patch_embed = 2.0 * patches * patch_in * d;
        // Per token: q, k, v, output projection, two MLP layers; per pair of tokens: a score
        // and a weighted sum, across all heads together.
        let block = |queries: f64| {
            2.0 * tokens * d * 3.0 * d
                + 4.0 * queries * tokens * d
                + queries * (2.0 * d * d + 4.0 * d * hidden)
        };
        let depth = self.depth as f64;
        let blocks = if class_token_last_block && self.depth > 0 {
            (depth - 1.0) * block(tokens) + block(1.0)
        } else {
            depth * block(tokens)
        };
        patch_embed + blocks + 2.0 * d * self.num_classes as f64
    }

    /// Floating-point operations of one image's training step, forward and backward: every
    /// product's backward pass costs two of its forward (the gradients of its inputs and of
    /// its weights), except the patch embedding's, whose input (the image) needs none.
    pub fn training_flops(&self) -> f64 {
        let d = self.embed_dim as f64;
        let patches = (self.num_tokens() - 1) as f64;
        let patch_embed = 2.0 * patches * (self.in_chans * self.patch_size * self.patch_size) as f64 * d;
        3.0 * self.forward_flops(true) - patch_embed
    }

    /// The same architecture with another number of classes (and so no class names, unless
    /// the count is unchanged).
    pub fn with_classes(&self, num_classes: usize) -> Self {
        let names = self.label_names.clone().filter(|n| n.len() == num_classes);
        self.clone().with_num_classes(num_classes).with_label_names(names)
    }

    /// The name of class `label`, or its number when the model has no names.
    pub fn class_name(&self, label: usize) -> String {
        self.label_names
            .as_ref()
            .and_then(|n| n.get(label).cloned())
            .unwrap_or_else(|| label.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve() {
        let s = VitConfig::preset("vit_small_patch16_384").unwrap();
        assert_eq!(s, VitConfig::new());
        assert_eq!(s.grid(), [24, 24]);
        assert_eq!(s.num_tokens(), 577);
        assert_eq!(VitConfig::preset("vit_base_patch16_224").unwrap().crop_pct, 0.9);
        assert!(VitConfig::preset("vit_huge_patch14_224").is_err());
        assert!(VitConfig::preset("resnet50").is_err());
    }

    #[test]
    fn flops_known_answers() {
        let s = VitConfig::new().with_num_classes(1000);
        // timm's profile of vit_small_patch16_384: 15.5 GMACs (every token in every block).
        let timm = s.forward_flops(false);
        assert!((timm / 2e9 - 15.5).abs() < 0.05, "{timm}");
        // One block by hand: 577 tokens, dim 384, MLP 1536.
        let block = 577.0 * (8.0 * 384f64.powi(2) + 4.0 * 384.0 * 1536.0) + 4.0 * 577f64.powi(2) * 384.0;
        let cls_block =
            2.0 * 577.0 * 384.0 * 1152.0 + 4.0 * 577.0 * 384.0 + 2.0 * 384f64.powi(2) + 4.0 * 384.0 * 1536.0;
        let ours = s.forward_flops(true);
        assert!((timm - ours - (block - cls_block)).abs() < 1.0, "{timm} {ours}");
        assert!(
            (1.0 - ours / timm - 0.0656).abs() < 0.001,
            "{}",
            1.0 - ours / timm
        );
        let patch_embed = 2.0 * 576.0 * 768.0 * 384.0;
        assert_eq!(s.training_flops(), 3.0 * ours - patch_embed);
    }

    #[test]
    fn architectures_are_validated_before_allocation() {
        let vit_l_384 = VitConfig::new()
            .with_embed_dim(1024)
            .with_depth(24)
            .with_num_heads(16);
        let vit_g_224 = VitConfig::new()
            .with_img_size([224, 224])
            .with_patch_size(14)
            .with_embed_dim(1408)
            .with_depth(40)
            .with_num_heads(16)
            .with_mlp_ratio(4.364);
        for fine in [VitConfig::new(), vit_l_384, vit_g_224] {
            assert_eq!(fine.validate(), Ok(()));
        }
        let refused = [
            (VitConfig::new().with_patch_size(0), "patch_size is 0"),
            (VitConfig::new().with_num_heads(7), "num_heads 7"),
            (VitConfig::new().with_img_size([100_000, 100_000]), "GiB"),
            (VitConfig::new().with_depth(100_000), "GiB"),
            (VitConfig::new().with_patch_size(500), "larger than img_size"),
            (VitConfig::new().with_norm_eps(f64::NAN), "norm_eps"),
            (VitConfig::new().with_crop_pct(1.5), "crop_pct"),
            (VitConfig::new().with_std([0.5, 0.0, 0.5]), "std"),
        ];
        for (config, why) in refused {
            let err = config.validate().unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
