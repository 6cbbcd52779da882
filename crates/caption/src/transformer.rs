//! The pre-norm transformer of CATR, with PyTorch `nn.MultiheadAttention`'s packed
//! `in_proj_weight` used as it is.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{Device, Tensor};

/// `nn.MultiheadAttention`: rows `[0, d)` of `in_proj_weight` project queries, `[d, 2d)`
/// keys and `[2d, 3d)` values.
#[derive(Module, Debug)]
pub struct MultiheadAttention {
    pub in_proj_weight: Param<Tensor<2>>,
    pub in_proj_bias: Param<Tensor<1>>,
    pub out_proj: Linear,
    num_heads: usize,
}

impl MultiheadAttention {
    pub fn new(d: usize, num_heads: usize, device: &Device) -> Self {
        Self {
            in_proj_weight: Initializer::XavierUniform { gain: 1.0 }.init_with(
                [3 * d, d],
                Some(d),
                Some(3 * d),
                device,
            ),
            in_proj_bias: Initializer::Zeros.init([3 * d], device),
            out_proj: LinearConfig::new(d, d).init(device),
            num_heads,
        }
    }

    /// Input projection `part` (0 = query, 1 = key, 2 = value) of `x`: `[batch, len, d]`.
    pub fn project(&self, x: Tensor<3>, part: usize) -> Tensor<3> {
        let (w, b) = self.in_proj(part..part + 1);
        x.matmul(w.unsqueeze::<3>()) + b.unsqueeze::<3>()
    }

    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Input projections `parts` (0 = query, 1 = key, 2 = value) side by side, as a linear
    /// layer's `[d_in, parts.len() * d]` weight and its bias.
    pub fn in_proj(&self, parts: std::ops::Range<usize>) -> (Tensor<2>, Tensor<1>) {
        let [_, d] = self.in_proj_weight.dims();
        let (start, len) = (parts.start * d, parts.len() * d);
        (
            self.in_proj_weight.val().narrow(0, start, len).transpose(),
            self.in_proj_bias.val().narrow(0, start, len),
        )
    }

    fn heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [batch, len, d] = x.dims();
        x.reshape([batch, len, self.num_heads, d / self.num_heads])
            .swap_dims(1, 2)
    }

    /// Attention over already projected `q` `[batch, lq, d]`, `k`, `v` `[batch, lk, d]`, with
    /// an optional additive mask broadcast to `[batch, heads, lq, lk]`. Returns the output
    /// after `out_proj` and the weights averaged over heads, `[batch, lq, lk]`.
    pub fn attend(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        mask: Option<Tensor<4>>,
    ) -> (Tensor<3>, Tensor<3>) {
        let [batch, lq, d] = q.dims();
        let head_dim = d / self.num_heads;
        let q = self.heads(q).mul_scalar((head_dim as f64).powf(-0.5));
        let scores = q.matmul(self.heads(k).swap_dims(2, 3)); // [batch, heads, lq, lk]
        let scores = match mask {
            Some(m) => scores + m,
            None => scores,
        };
        let weights = softmax(scores, 3);
        let context = weights
            .clone()
            .matmul(self.heads(v))
            .swap_dims(1, 2)
            .reshape([batch, lq, d]);
        let mean = weights.mean_dim(1).squeeze_dim::<3>(1);
        (self.out_proj.forward(context), mean)
    }
}

/// `nn.LayerNorm`'s default epsilon, which CATR's transformer layers keep.
pub const NORM_EPS: f64 = 1e-5;

fn norm(d: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(NORM_EPS).init(device)
}

/// `x + SelfAttn(LN1(x) + pos)`, then `x + FFN(LN2(x))`.
#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(d: usize, heads: usize, ffn: usize, device: &Device) -> Self {
        Self {
            self_attn: MultiheadAttention::new(d, heads, device),
            linear1: LinearConfig::new(d, ffn).init(device),
            linear2: LinearConfig::new(ffn, d).init(device),
            norm1: norm(d, device),
            norm2: norm(d, device),
        }
    }

    /// `x`, `pos`: `[batch, cells, d]`.
    pub fn forward(&self, x: Tensor<3>, pos: Tensor<3>) -> Tensor<3> {
        let h = self.norm1.forward(x.clone());
        let qk = h.clone() + pos;
        let a = &self.self_attn;
        let (attended, _) = a.attend(a.project(qk.clone(), 0), a.project(qk, 1), a.project(h, 2), None);
        let x = x + attended;
        let h = self.norm2.forward(x.clone());
        x.clone() + self.linear2.forward(relu(self.linear1.forward(h)))
    }
}

/// Projected keys and values of one decoder layer: the growing self-attention cache and
/// the fixed cross-attention memory.
#[derive(Debug, Clone)]
pub struct LayerCache {
    pub self_k: Option<Tensor<3>>,
    pub self_v: Option<Tensor<3>>,
    pub cross_k: Tensor<3>,
    pub cross_v: Tensor<3>,
    self_proj: Projections,
    cross_proj: Projections,
}

/// Self-attention (causal), cross-attention to the image, FFN; pre-norm.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: MultiheadAttention,
    pub multihead_attn: MultiheadAttention,
    pub linear1: Linear,
    pub linear2: Linear,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
}

impl DecoderLayer {
    pub fn new(d: usize, heads: usize, ffn: usize, device: &Device) -> Self {
        Self {
            self_attn: MultiheadAttention::new(d, heads, device),
            multihead_attn: MultiheadAttention::new(d, heads, device),
            linear1: LinearConfig::new(d, ffn).init(device),
            linear2: LinearConfig::new(ffn, d).init(device),
            norm1: norm(d, device),
            norm2: norm(d, device),
            norm3: norm(d, device),
        }
    }

    /// The whole target sequence at once (teacher forcing): `t` `[batch, len, d]` with query
    /// positions `qpos` `[1, len, d]`, `memory` `[batch, cells, d]` with `pos` `[1, cells, d]`,
    /// and the additive causal `mask` `[1, 1, len, len]`. Returns the output and the
    /// cross-attention weights averaged over heads, `[batch, len, cells]`.
    pub fn forward(
        &self,
        t: Tensor<3>,
        qpos: Tensor<3>,
        memory: Tensor<3>,
        pos: Tensor<3>,
        mask: Tensor<4>,
    ) -> (Tensor<3>, Tensor<3>) {
        let h = self.norm1.forward(t.clone());
        let a = &self.self_attn;
        let hq = h.clone() + qpos.clone();
        let (attended, _) = a.attend(
            a.project(hq.clone(), 0),
            a.project(hq, 1),
            a.project(h, 2),
            Some(mask),
        );
        let t = t + attended;
        let h = self.norm2.forward(t.clone());
        let c = &self.multihead_attn;
        let (attended, weights) = c.attend(
            c.project(h + qpos, 0),
            c.project(memory.clone() + pos, 1),
            c.project(memory, 2),
            None,
        );
        let t = t + attended;
        let h = self.norm3.forward(t.clone());
        (t + self.linear2.forward(relu(self.linear1.forward(h))), weights)
    }

    /// The cross-attention's projected keys (`memory + pos`) and values (`memory`), once per
    /// image.
    pub fn memory_keys_values(&self, memory: Tensor<3>, pos: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let c = &self.multihead_attn;
        (c.project(memory.clone() + pos, 1), c.project(memory, 2))
    }

    /// [`DecoderLayer::memory_keys_values`] and the sliced projections, for [`DecoderLayer::step`].
    pub fn cache(&self, memory: Tensor<3>, pos: Tensor<3>) -> LayerCache {
        let (cross_k, cross_v) = self.memory_keys_values(memory, pos);
        LayerCache {
            self_k: None,
            self_v: None,
            cross_k,
            cross_v,
            self_proj: self.self_attn.projections(),
            cross_proj: self.multihead_attn.projections(),
        }
    }

    /// One new position: `t` and its query position `qpos`, `[batch, 1, d]`. Appends to the
    /// self-attention cache; returns the output and the cross-attention weights `[batch, 1, cells]`.
    pub fn step(&self, t: Tensor<3>, qpos: Tensor<3>, cache: &mut LayerCache) -> (Tensor<3>, Tensor<3>) {
        let h = self.norm1.forward(t.clone());
        let a = &self.self_attn;
        let p = &cache.self_proj;
        let hq = h.clone() + qpos.clone();
        let q = p.project(hq.clone(), 0);
        let k_new = p.project(hq, 1);
        let v_new = p.project(h, 2);
        let k = match cache.self_k.take() {
            Some(k) => Tensor::cat(vec![k, k_new], 1),
            None => k_new,
        };
        let v = match cache.self_v.take() {
            Some(v) => Tensor::cat(vec![v, v_new], 1),
            None => v_new,
        };
        // Causality is implicit: the cache holds only this and earlier positions.
        let (attended, _) = a.attend(q, k.clone(), v.clone(), None);
        (cache.self_k, cache.self_v) = (Some(k), Some(v));
        let t = t + attended;
        let h = self.norm2.forward(t.clone());
        let c = &self.multihead_attn;
        let q = cache.cross_proj.project(h + qpos, 0);
        let (attended, weights) = c.attend(q, cache.cross_k.clone(), cache.cross_v.clone(), None);
        let t = t + attended;
        let h = self.norm3.forward(t.clone());
        (t + self.linear2.forward(relu(self.linear1.forward(h))), weights)
    }
}

/// The three input projections of one attention, sliced and transposed once for decoding.
#[derive(Debug, Clone)]
pub struct Projections {
    /// `[1, d_in, d_out]` weights and `[1, 1, d_out]` biases for query, key and value.
    weights: [Tensor<3>; 3],
    biases: [Tensor<3>; 3],
}

impl Projections {
    pub fn project(&self, x: Tensor<3>, part: usize) -> Tensor<3> {
        x.matmul(self.weights[part].clone()) + self.biases[part].clone()
    }
}

impl MultiheadAttention {
    /// Slices of `in_proj_weight`/`in_proj_bias`, ready for [`Projections::project`].
    pub fn projections(&self) -> Projections {
        let [(w0, b0), (w1, b1), (w2, b2)] = [0, 1, 2].map(|p| self.in_proj(p..p + 1));
        Projections {
            weights: [w0, w1, w2].map(|w| w.unsqueeze()),
            biases: [b0, b1, b2].map(|b| b.unsqueeze()),
        }
    }
}

/// `[1, 1, len, len]` additive mask that hides later positions (`-1e9` above the diagonal,
/// which is exactly 0 after softmax), as `generate_square_subsequent_mask`.
pub fn causal_mask(len: usize, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..len * len)
        .map(|i| if i % len > i / len { -1e9 } else { 0.0 })
        .collect();
    Tensor::<4>::from_data(burn::tensor::TensorData::new(values, [1, 1, len, len]), device)
}

/// DETR's sine position encoding for an unpadded `h x w` grid: `[h * w, d]` row-major,
/// channels `0..d/2` from the row coordinate and `d/2..d` from the column.
pub fn sine_position(h: usize, w: usize, d: usize) -> Vec<f32> {
    let npf = d / 2;
    let two_pi = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..npf)
        .map(|k| 10000f32.powf((2 * (k / 2)) as f32 / npf as f32))
        .collect();
    let mut out = vec![0f32; h * w * d];
    for y in 0..h {
        let ey = (y + 1) as f32 / (h as f32 + 1e-6) * two_pi;
        for x in 0..w {
            let ex = (x + 1) as f32 / (w as f32 + 1e-6) * two_pi;
            let cell = &mut out[(y * w + x) * d..][..d];
            for k in 0..npf {
                let (vy, vx) = (ey / dim_t[k], ex / dim_t[k]);
                cell[k] = if k % 2 == 0 { vy.sin() } else { vy.cos() };
                cell[npf + k] = if k % 2 == 0 { vx.sin() } else { vx.cos() };
            }
        }
    }
    out
}
