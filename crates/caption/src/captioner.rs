//! Greedy captions with per-step cross-attention: [`Catr::caption`], and a [`Captioner`]
//! that prepares the decoder once for many images (on plain slices on the `flex` CPU
//! backend, through the tensors elsewhere).

use burn::tensor::Tensor;
use gaze_nn::decode::with_team;
use ndarray::Array2;

use crate::cpu_decoder::{CpuDecoder, CpuWeights, values};
use crate::greedy::{Decoding, greedy};
use crate::transformer::LayerCache;
use crate::{Catr, Word};

/// A greedy caption and where each step looked.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionOutput {
    /// Generated word-piece ids, without `[CLS]` and `[SEP]`.
    pub tokens: Vec<usize>,
    /// Per decoding step (one per token, plus the step that chose `[SEP]` if it was
    /// reached), the last decoder layer's cross-attention averaged over heads, `hf * wf`
    /// values row-major over the feature grid.
    pub attention: Vec<Vec<f32>>,
    /// Feature grid `(hf, wf)`: `(ceil(h / 16), ceil(w / 16))` for the dilated backbone.
    pub grid: (usize, usize),
    /// Logits of the first step, for checks.
    pub first_logits: Vec<f32>,
}

impl CaptionOutput {
    /// The map of the step that chose `[SEP]`, when the caption ended before the limit.
    pub fn end_attention(&self) -> Option<&[f32]> {
        self.attention.get(self.tokens.len()).map(Vec::as_slice)
    }

    /// One map per word of `words` (this caption's, from [`crate::words`]): a word's pieces
    /// share it, their maps averaged; then `[end]` with [`CaptionOutput::end_attention`].
    pub fn word_maps(&self, words: &[Word]) -> Vec<(String, Array2<f32>)> {
        let cells = self.grid.0 * self.grid.1;
        let as_grid = |cells: Vec<f32>| Array2::from_shape_vec(self.grid, cells).expect("one value per cell");
        let mut maps: Vec<(String, Array2<f32>)> = words
            .iter()
            .map(|word| {
                let mut mean = vec![0f32; cells];
                for &s in &word.steps {
                    mean.iter_mut()
                        .zip(&self.attention[s])
                        .for_each(|(m, v)| *m += v / word.steps.len() as f32);
                }
                (word.text.clone(), as_grid(mean))
            })
            .collect();
        if let Some(end) = self.end_attention() {
            maps.push(("[end]".into(), as_grid(end.to_vec())));
        }
        maps
    }
}

impl Catr {
    /// Greedy decoding as CATR's `predict.py` (start from `[CLS]`, stop at `[SEP]` or after
    /// `max_tokens`), with the encoder run once and a key/value cache in the decoder. For many
    /// images, [`Catr::captioner`] prepares the decoder once.
    pub fn caption(&self, image: Tensor<4>, max_tokens: usize) -> CaptionOutput {
        self.captioner().caption(image, max_tokens)
    }

    /// A greedy captioner for this model. On the `flex` CPU backend it copies the decoder's
    /// and head's weights out once and decodes on plain slices ([`CpuWeights`]); elsewhere it
    /// decodes through the tensors.
    pub fn captioner(&self) -> Captioner<'_> {
        let on_cpu = gaze_nn::ops::on_plain_flex(&self.transformer.embeddings.word_embeddings.weight.val());
        Captioner {
            model: self,
            cpu: on_cpu.then(|| CpuWeights::new(self)),
        }
    }
}

/// [`Catr::caption`] for many images, its preparation done once.
pub struct Captioner<'a> {
    model: &'a Catr,
    cpu: Option<CpuWeights>,
}

impl Captioner<'_> {
    /// See [`Catr::caption`].
    pub fn caption(&self, image: Tensor<4>, max_tokens: usize) -> CaptionOutput {
        let model = self.model;
        let (memory, pos, grid) = model.encode(image);
        let positions = model.transformer.embeddings.position_embeddings.weight.dims()[0];
        let steps = max_tokens.min(positions - 1);
        let (tokens, attention, first_logits) = match &self.cpu {
            Some(weights) => {
                with_team(|team| greedy(&mut CpuDecoder::new(weights, team, model, memory, pos), steps))
            }
            None => greedy(&mut TensorDecoder::new(model, memory, pos), steps),
        };
        CaptionOutput {
            tokens,
            attention,
            grid,
            first_logits,
        }
    }
}

/// Decoding through the tensors, on any backend.
struct TensorDecoder<'a> {
    model: &'a Catr,
    caches: Vec<LayerCache>,
}

impl<'a> TensorDecoder<'a> {
    fn new(model: &'a Catr, memory: Tensor<3>, pos: Tensor<3>) -> Self {
        let caches = model
            .transformer
            .decoder
            .layers
            .iter()
            .map(|l| l.cache(memory.clone(), pos.clone()))
            .collect();
        Self { model, caches }
    }
}

impl Decoding for TensorDecoder<'_> {
    fn step(&mut self, token: usize, position: usize, logits: Option<&mut Vec<f32>>) -> (usize, Vec<f32>) {
        let emb = &self.model.transformer.embeddings;
        let decoder = &self.model.transformer.decoder;
        let words = emb.word_embeddings.weight.val();
        let [_, d] = words.dims();
        let qpos = emb
            .position_embeddings
            .weight
            .val()
            .narrow(0, position, 1)
            .reshape([1, 1, d]);
        let word = words.narrow(0, token, 1).reshape([1, 1, d]);
        // The learned position is added here and again as the query position, as upstream.
        let mut t = emb.layer_norm.forward(word + qpos.clone());
        let mut weights = None;
        for (layer, cache) in decoder.layers.iter().zip(self.caches.iter_mut()) {
            let (out, w) = layer.step(t, qpos.clone(), cache);
            t = out;
            weights = Some(w);
        }
        let all = values(self.model.head(decoder.norm.forward(t)));
        let next = gaze_nn::argmax(&all);
        if let Some(logits) = logits {
            *logits = all;
        }
        (next, values(weights.expect("at least one decoder layer")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn slice_decoding_equals_tensor_decoding() {
        let device = Device::flex();
        let _draws = gaze_nn::device::seeded(&device, 11);
        let model = crate::model::tests::tiny().init(&device);
        let image = Tensor::<4>::random(
            [1, 3, 48, 64],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let fast = model.captioner();
        assert_eq!(
            fast.cpu.is_some(),
            gaze_nn::ops::on_plain_flex(&image),
            "flex decodes on slices"
        );
        let tensors = Captioner {
            model: &model,
            cpu: None,
        };
        let (a, b) = (fast.caption(image.clone(), 10), tensors.caption(image, 10));
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.attention.len(), b.attention.len());
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(max_diff(&a.first_logits, &b.first_logits) < 1e-5);
        for (x, y) in a.attention.iter().zip(&b.attention) {
            assert!(max_diff(x, y) < 1e-6);
        }
    }
}
