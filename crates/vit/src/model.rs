//! The network. Field names are timm's state-dict keys, so a timm checkpoint maps onto it
//! one to one: `patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1, attn.qkv,
//! attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use crate::VitConfig;
use gaze_nn::ops::{Precision, gelu, layer_norm, merge_heads, split_heads};

/// timm initialises every Linear with a (truncated) normal of std 0.02 and zero bias.
fn init_linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
        .init(device)
}

/// Image to patch tokens: a stride-`p` convolution with a `p x p` kernel.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    #[module(skip)]
    precision: Precision,
}

impl PatchEmbed {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let p = config.patch_size;
        let proj = Conv2dConfig::new([config.in_chans, config.embed_dim], [p, p])
            .with_stride([p, p])
            .init(device);
        Self {
            proj,
            precision: Precision::Fp32,
        }
    }

    /// `[batch, 3, h, w]` to `[batch, patches, dim]`, patches row-major over the grid.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<3> {
        self.precision.patch_embed(&self.proj, images)
    }
}

/// Multi-head self-attention with timm's fused `qkv` projection.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    num_heads: usize,
    #[module(skip)]
    precision: Precision,
}

impl Attention {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let d = config.embed_dim;
        Self {
            qkv: init_linear(d, 3 * d, config.qkv_bias, device),
            proj: init_linear(d, d, true, device),
            num_heads: config.num_heads,
            precision: Precision::Fp32,
        }
    }

    /// The fused projection `[batch, tokens, 3 * dim]`, queries, keys and values as the
    /// attention products' operands.
    fn qkv(&self, x: Tensor<3>) -> Tensor<3> {
        self.precision.linear_operand(&self.qkv, x)
    }

    /// Fused scaled-dot-product attention; the backend may never materialise the weights.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let context = self.precision.attention(self.qkv(x), self.num_heads);
        self.precision.linear(&self.proj, context)
    }

    /// The class token's context alone, `[batch, 1, dim]`, from the fused projection `qkv`
    /// `[batch, tokens, 3 * dim]` of every token: token 0's query against every key.
    fn class_token_context(&self, qkv: Tensor<3>) -> Tensor<3> {
        let [q, k, v] = split_heads(qkv, self.num_heads);
        let (context, _) = attend(q.narrow(2, 0, 1), k, v, self.precision); // [batch, heads, 1, head_dim]
        merge_heads(context)
    }

    /// Explicit `softmax(q k^T / sqrt(d)) v`, also returning the attention probabilities
    /// `[batch, heads, queries, keys]`.
    pub fn forward_with_weights(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [q, k, v] = split_heads(self.qkv(x), self.num_heads);
        let (context, weights) = attend(q, k, v, self.precision);
        (self.precision.linear(&self.proj, merge_heads(context)), weights)
    }
}

/// `softmax(q kᵀ / sqrt(head_dim)) v` for `q` `[batch, heads, queries, head_dim]` and `k`, `v`
/// `[batch, heads, keys, head_dim]`, and the probabilities `[batch, heads, queries, keys]`;
/// the probabilities multiply the values as `precision`'s operands.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, precision: Precision) -> (Tensor<4>, Tensor<4>) {
    let [.., head_dim] = q.dims();
    let scale = (head_dim as f64).powf(-0.5);
    let weights = softmax(q.mul_scalar(scale).matmul(k.swap_dims(2, 3)), 3);
    (precision.operand(weights.clone()).matmul(v), weights)
}

/// `fc1`, exact (erf) GELU, `fc2`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    #[module(skip)]
    precision: Precision,
}

impl Mlp {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let hidden = (config.embed_dim as f64 * config.mlp_ratio) as usize;
        Self {
            fc1: init_linear(config.embed_dim, hidden, true, device),
            fc2: init_linear(hidden, config.embed_dim, true, device),
            precision: Precision::Fp32,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let p = self.precision;
        p.linear(&self.fc2, gelu(p.linear(&self.fc1, x)))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// The norms' epsilon, which [`layer_norm`] needs and burn's `LayerNorm` keeps private.
    pub(crate) norm_eps: f64,
}

impl Block {
    fn new(config: &VitConfig, device: &Device) -> Self {
        let norm = || {
            LayerNormConfig::new(config.embed_dim)
                .with_epsilon(config.norm_eps)
                .init(device)
        };
        Self {
            norm1: norm(),
            attn: Attention::new(config, device),
            norm2: norm(),
            mlp: Mlp::new(config, device),
            norm_eps: config.norm_eps,
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(layer_norm(&self.norm1, x, self.norm_eps));
        x.clone() + self.mlp.forward(layer_norm(&self.norm2, x, self.norm_eps))
    }

    /// [`Block::forward`]'s output for the class token alone, `[batch, 1, dim]`: the only row
    /// of the last block that class-token pooling reads. Keys and values still come from
    /// every token, so the row is the one the whole block would give; the other tokens'
    /// attention, output projection and MLP, three quarters of the block's arithmetic at
    /// ViT-S/16-384's 577 tokens, are skipped.
    pub fn forward_class_token(&self, x: Tensor<3>) -> Tensor<3> {
        let qkv = self.attn.qkv(layer_norm(&self.norm1, x.clone(), self.norm_eps));
        let context = self.attn.class_token_context(qkv); // [batch, 1, dim]
        let x = x.narrow(1, 0, 1) + self.attn.precision.linear(&self.attn.proj, context);
        x.clone() + self.mlp.forward(layer_norm(&self.norm2, x, self.norm_eps))
    }

    pub fn forward_with_weights(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let (attended, weights) =
            self.attn
                .forward_with_weights(layer_norm(&self.norm1, x.clone(), self.norm_eps));
        let x = x + attended;
        (
            x.clone() + self.mlp.forward(layer_norm(&self.norm2, x, self.norm_eps)),
            weights,
        )
    }
}

/// Logits and, per block, the attention probabilities `[batch, heads, tokens, tokens]`.
/// Token 0 is the class token; token `1 + r * grid_w + c` is patch `(r, c)`.
#[derive(Debug, Clone)]
pub struct VitOutput {
    pub logits: Tensor<2>,
    pub attentions: Vec<Tensor<4>>,
}

/// timm's `VisionTransformer` with class-token pooling.
#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    pub cls_token: Param<Tensor<3>>,
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub head: Linear,
    /// The final norm's epsilon (see [`Block`]).
    pub(crate) norm_eps: f64,
    #[module(skip)]
    pub(crate) precision: Precision,
}

impl VitConfig {
    /// A randomly initialised model, with timm's initialisation scales.
    pub fn init(&self, device: &Device) -> VisionTransformer {
        assert_eq!(
            self.embed_dim % self.num_heads,
            0,
            "embed_dim must divide into heads"
        );
        let d = self.embed_dim;
        let pos = Initializer::Normal { mean: 0.0, std: 0.02 };
        let cls = Initializer::Normal { mean: 0.0, std: 1e-6 };
        VisionTransformer {
            patch_embed: PatchEmbed::new(self, device),
            cls_token: cls.init([1, 1, d], device),
            pos_embed: pos.init([1, self.num_tokens(), d], device),
            blocks: (0..self.depth).map(|_| Block::new(self, device)).collect(),
            norm: LayerNormConfig::new(d).with_epsilon(self.norm_eps).init(device),
            head: init_linear(d, self.num_classes, true, device),
            norm_eps: self.norm_eps,
            precision: Precision::Fp32,
        }
    }
}

impl VisionTransformer {
    /// Tokens before the blocks: `[batch, 1 + patches, dim]`, class token first, position
    /// embedding added after the class token is prepended.
    fn embed(&self, images: Tensor<4>) -> Tensor<3> {
        let patches = self.patch_embed.forward(images);
        let [batch, _, dim] = patches.dims();
        let cls = self.cls_token.val().expand([batch, 1, dim]);
        Tensor::cat(vec![cls, patches], 1) + self.pos_embed.val()
    }

    /// Logits from the tokens after the last block, or from the class token alone.
    fn classify(&self, tokens: Tensor<3>) -> Tensor<2> {
        let [batch, _, dim] = tokens.dims();
        let cls = layer_norm(&self.norm, tokens.narrow(1, 0, 1), self.norm_eps); // [batch, 1, dim]
        self.precision.linear(&self.head, cls.reshape([batch, dim]))
    }

    /// The model with every matrix product at `precision`; the parameters stay f32.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self.patch_embed.precision = precision;
        for block in &mut self.blocks {
            block.attn.precision = precision;
            block.mlp.precision = precision;
        }
        self
    }

    /// How the matrix products run.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Logits `[batch, classes]` for normalised images `[batch, 3, h, w]`.
    ///
    /// The last block runs for the class token only ([`Block::forward_class_token`]), the one
    /// row the classifier reads: timm computes every token's and drops the rest, so the logits
    /// are timm's with less arithmetic, forward and backward.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let tokens = self.embed(images);
        let Some((last, blocks)) = self.blocks.split_last() else {
            return self.classify(tokens);
        };
        let tokens = blocks.iter().fold(tokens, |x, block| block.forward(x));
        self.classify(last.forward_class_token(tokens))
    }

    /// Logits and every block's attention probabilities, through the explicit softmax path.
    pub fn forward_with_attention(&self, images: Tensor<4>) -> VitOutput {
        let mut tokens = self.embed(images);
        let mut attentions = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (next, weights) = block.forward_with_weights(tokens);
            tokens = next;
            attentions.push(weights);
        }
        VitOutput {
            logits: self.classify(tokens),
            attentions,
        }
    }

    /// Number of classifier outputs.
    pub fn num_classes(&self) -> usize {
        self.head.weight.dims()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn tiny() -> VitConfig {
        VitConfig::new()
            .with_img_size([32, 48])
            .with_patch_size(16)
            .with_embed_dim(24)
            .with_depth(2)
            .with_num_heads(3)
            .with_num_classes(5)
    }

    #[test]
    fn explicit_attention_equals_fused() {
        let device = Device::flex();
        let _draws = gaze_nn::device::seeded(&device, 7);
        let model = tiny().init(&device);
        let images = Tensor::<4>::random([2, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
        // In bf16 too: the fused kernel and the explicit product round the same operands.
        let bf16 = model.clone().with_precision(Precision::Bf16);
        let fast = bf16.forward(images.clone());
        let explicit = bf16.forward_with_attention(images.clone());
        fast.into_data()
            .assert_approx_eq::<f32>(&explicit.logits.into_data(), Tolerance::absolute(1e-5));
        let fast = model.forward(images.clone());
        let explicit = model.forward_with_attention(images);
        fast.into_data()
            .assert_approx_eq::<f32>(&explicit.logits.into_data(), Tolerance::absolute(1e-5));
        assert_eq!(explicit.attentions.len(), 2);
        let weights = explicit.attentions[1].clone();
        assert_eq!(weights.dims(), [2, 3, 7, 7]);
        let row_sums = weights.sum_dim(3).into_data().try_to_vec::<f32>().unwrap();
        assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{row_sums:?}");
    }

    /// The precision of every module that runs products.
    fn precisions(model: &VisionTransformer) -> Vec<Precision> {
        let mut all = vec![model.precision, model.patch_embed.precision];
        for block in &model.blocks {
            all.extend([block.attn.precision, block.mlp.precision]);
        }
        all
    }

    #[test]
    fn precision_reaches_every_product_and_survives_valid_and_a_step() {
        let device = Device::flex().autodiff();
        let _draws = gaze_nn::device::seeded(&device, 3);
        let model = tiny().init(&device).with_precision(Precision::Bf16);
        assert!(precisions(&model).iter().all(|p| *p == Precision::Bf16));
        let images = Tensor::<4>::random([2, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
        let bf16 = model.forward(images.clone());
        let fp32 = model.clone().with_precision(Precision::Fp32).forward(images);
        let moved: f32 = (bf16.clone() - fp32).abs().max().into_scalar();
        assert!(moved > 0.0, "bf16 logits equal fp32's");
        assert!(
            precisions(&model.clone().valid())
                .iter()
                .all(|p| *p == Precision::Bf16)
        );
        let grads = burn::optim::GradientsParams::from_grads(bf16.sum().backward(), &model);
        let stepped = burn::optim::SgdConfig::new().init().step(0.1, model, grads);
        assert!(precisions(&stepped).iter().all(|p| *p == Precision::Bf16));
    }

    #[test]
    fn shapes_follow_the_config() {
        let model = tiny().init(&Device::flex());
        assert_eq!(model.pos_embed.dims(), [1, 7, 24]);
        assert_eq!(model.num_classes(), 5);
        let logits = model.forward(Tensor::zeros([1, 3, 32, 48], &Device::flex()));
        assert_eq!(logits.dims(), [1, 5]);
    }
}
