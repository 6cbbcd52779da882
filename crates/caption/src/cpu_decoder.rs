//! Greedy decoding on plain `f32` slices, for the CPU. Through burn's tensors one step of
//! CATR's decoder and head is about 300 small operations for about 9M multiply-adds, so the
//! cost per operation, not the arithmetic, sets the pace. Here the
//! weights are copied out once ([`CpuWeights`], kept by a [`crate::Captioner`]) and a step is
//! a few loops per layer, each weight matrix read once, split over a spinning [`Team`]; the
//! word layer reads a bfloat16 copy and recomputes the close calls in f32 ([`ArgmaxHead`]).
//! `captioner.rs` tests it equal to the tensor path, and `model.rs` greedy decoding equal to
//! teacher forcing.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use gaze_nn::decode::{ArgmaxHead, Team, attend_one};

use crate::Catr;
use crate::greedy::Decoding;
use crate::transformer::{DecoderLayer, MultiheadAttention, NORM_EPS};

/// A tensor's elements, row-major.
pub(crate) fn values<const D: usize>(x: Tensor<D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 after convert")
}

/// A linear layer as `[d_in, d_out]` weight and bias, as burn's `Linear` holds it.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    fn new(linear: &Linear) -> Self {
        let weight = linear.weight.val();
        let bias = match &linear.bias {
            Some(b) => values(b.val()),
            None => vec![0.0; weight.dims()[1]],
        };
        Self {
            weight: values(weight),
            bias,
        }
    }

    /// Parts `parts` (0 query, 1 key, 2 value) of an attention's packed input projection.
    fn in_proj(attention: &MultiheadAttention, parts: std::ops::Range<usize>) -> Self {
        let (weight, bias) = attention.in_proj(parts);
        Self {
            weight: values(weight),
            bias: values(bias),
        }
    }

    fn apply<'w>(&'w self, team: &Team<'w>, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.bias.len()];
        team.vec_mat(&mut out, x, &self.weight, Some(&self.bias));
        out
    }
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(norm: &LayerNorm, eps: f64) -> Self {
        let gamma = values(norm.gamma.val());
        let beta = match &norm.beta {
            Some(b) => values(b.val()),
            None => vec![0.0; gamma.len()],
        };
        Self {
            gamma,
            beta,
            eps: eps as f32,
        }
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + self.eps).sqrt();
        x.iter()
            .zip(&self.gamma)
            .zip(&self.beta)
            .map(|((v, g), b)| (v - mean) * inv * g + b)
            .collect()
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn add_assign(a: &mut [f32], b: &[f32]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

fn relu(mut x: Vec<f32>) -> Vec<f32> {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
    x
}

/// One decoder layer's weights.
struct LayerWeights {
    norms: [Norm; 3],
    /// Query and key of the self-attention, which both read `h + qpos`: `[d, 2d]`.
    self_qk: Dense,
    self_v: Dense,
    self_out: Dense,
    cross_q: Dense,
    cross_out: Dense,
    linear1: Dense,
    linear2: Dense,
}

impl LayerWeights {
    fn new(layer: &DecoderLayer) -> Self {
        Self {
            norms: [&layer.norm1, &layer.norm2, &layer.norm3].map(|n| Norm::new(n, NORM_EPS)),
            self_qk: Dense::in_proj(&layer.self_attn, 0..2),
            self_v: Dense::in_proj(&layer.self_attn, 2..3),
            self_out: Dense::new(&layer.self_attn.out_proj),
            cross_q: Dense::in_proj(&layer.multihead_attn, 0..1),
            cross_out: Dense::new(&layer.multihead_attn.out_proj),
            linear1: Dense::new(&layer.linear1),
            linear2: Dense::new(&layer.linear2),
        }
    }
}

/// One decoder layer's keys and values for one caption.
struct LayerState {
    /// Self-attention keys and values of the positions so far, `[len, d]` each.
    keys: Vec<f32>,
    values: Vec<f32>,
    /// Cross-attention keys (`memory + pos`) and values (`memory`), projected: `[cells, d]`.
    memory_keys: Vec<f32>,
    memory_values: Vec<f32>,
}

impl LayerState {
    fn new((memory_keys, memory_values): (Tensor<3>, Tensor<3>)) -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            memory_keys: values(memory_keys),
            memory_values: values(memory_values),
        }
    }

    /// `t` after layer `w`, and the cross-attention weights `[heads, cells]`.
    fn step<'w>(
        &mut self,
        team: &Team<'w>,
        w: &'w LayerWeights,
        t: &[f32],
        qpos: &[f32],
        heads: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let d = t.len();
        let h = w.norms[0].apply(t);
        let qk = w.self_qk.apply(team, &add(&h, qpos));
        self.keys.extend_from_slice(&qk[d..]);
        self.values.extend_from_slice(&w.self_v.apply(team, &h));
        let len = self.keys.len() / d;
        let (mut weights, mut context) = (vec![0.0; heads * len], vec![0.0; d]);
        attend_one(
            &qk[..d],
            &self.keys,
            &self.values,
            heads,
            &mut weights,
            &mut context,
        );
        let mut t = add(t, &w.self_out.apply(team, &context));

        let h = w.norms[1].apply(&t);
        let q = w.cross_q.apply(team, &add(&h, qpos));
        let cells = self.memory_keys.len() / d;
        let mut weights = vec![0.0; heads * cells];
        attend_one(
            &q,
            &self.memory_keys,
            &self.memory_values,
            heads,
            &mut weights,
            &mut context,
        );
        add_assign(&mut t, &w.cross_out.apply(team, &context));

        let h = w.norms[2].apply(&t);
        add_assign(&mut t, &w.linear2.apply(team, &relu(w.linear1.apply(team, &h))));
        (t, weights)
    }
}

/// The decoder and head of a [`Catr`] as plain arrays, copied out once for many captions.
pub(crate) struct CpuWeights {
    /// Word embeddings `[vocab, d]`, left in the tensor: a step reads one row.
    words: Tensor<2>,
    /// Learned positions `[max_positions, d]`.
    positions: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<LayerWeights>,
    norm: Norm,
    /// The head's two hidden layers (each followed by ReLU) and its word layer.
    hidden: [Dense; 2],
    output: ArgmaxHead,
    heads: usize,
}

impl CpuWeights {
    pub fn new(model: &Catr) -> Self {
        let transformer = &model.transformer;
        let emb = &transformer.embeddings;
        let decoder = &transformer.decoder;
        let [a, b, c] = model.head_layers();
        let output = Dense::new(c);
        Self {
            words: emb.word_embeddings.weight.val(),
            positions: values(emb.position_embeddings.weight.val()),
            embedding_norm: Norm::new(&emb.layer_norm, emb.layer_norm_eps),
            layers: decoder.layers.iter().map(LayerWeights::new).collect(),
            norm: Norm::new(&decoder.norm, NORM_EPS),
            hidden: [Dense::new(a), Dense::new(b)],
            output: ArgmaxHead::new(output.weight, output.bias),
            heads: decoder.layers[0].self_attn.num_heads(),
        }
    }
}

/// Decoding one caption with [`CpuWeights`] and a [`Team`].
pub(crate) struct CpuDecoder<'t, 'w> {
    weights: &'w CpuWeights,
    team: &'t Team<'w>,
    layers: Vec<LayerState>,
}

impl<'t, 'w> CpuDecoder<'t, 'w> {
    /// `memory` and `pos` as [`Catr::encode`] returns them, for one image.
    pub fn new(
        weights: &'w CpuWeights,
        team: &'t Team<'w>,
        model: &Catr,
        memory: Tensor<3>,
        pos: Tensor<3>,
    ) -> Self {
        let layers = model
            .transformer
            .decoder
            .layers
            .iter()
            .map(|l| LayerState::new(l.memory_keys_values(memory.clone(), pos.clone())))
            .collect();
        Self {
            weights,
            team,
            layers,
        }
    }
}

impl Decoding for CpuDecoder<'_, '_> {
    fn step(&mut self, token: usize, position: usize, logits: Option<&mut Vec<f32>>) -> (usize, Vec<f32>) {
        let (w, team) = (self.weights, self.team);
        let d = w.words.dims()[1];
        let qpos = &w.positions[position * d..][..d];
        let word = values(w.words.clone().narrow(0, token, 1));
        // The learned position is added here and again as the query position, as upstream.
        let mut t = w.embedding_norm.apply(&add(&word, qpos));
        let mut weights = Vec::new();
        for (state, layer) in self.layers.iter_mut().zip(&w.layers) {
            (t, weights) = state.step(team, layer, &t, qpos, w.heads);
        }
        let cells = weights.len() / w.heads;
        let mean: Vec<f32> = (0..cells)
            .map(|c| weights.iter().skip(c).step_by(cells).sum::<f32>() / w.heads as f32)
            .collect();
        let x = w.norm.apply(&t);
        let x = w.hidden.iter().fold(x, |x, layer| relu(layer.apply(team, &x)));
        let next = match logits {
            Some(logits) => {
                *logits = w.output.logits(team, &x);
                gaze_nn::argmax(logits)
            }
            None => w.output.argmax(team, &x),
        };
        (next, mean)
    }
}
