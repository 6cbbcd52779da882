//! The whole captioner and its greedy decoder.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::CatrConfig;
use crate::backbone::ResNet;
use crate::transformer::{DecoderLayer, EncoderLayer, causal_mask, sine_position};

/// `[CLS]`, the first input token, and `[SEP]`, which ends a caption (hard-coded upstream).
pub const CLS: usize = 101;
pub const SEP: usize = 102;

#[derive(Module, Debug)]
pub struct Encoder {
    pub layers: Vec<EncoderLayer>,
    pub norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    pub norm: LayerNorm,
}

/// Word plus learned position embedding, then LayerNorm (eps 1e-12), as BERT.
#[derive(Module, Debug)]
pub struct Embeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    /// Checkpoint `LayerNorm`.
    pub layer_norm: LayerNorm,
    /// Its epsilon (BERT's 1e-12), for decoding outside the tensors.
    pub layer_norm_eps: f64,
}

#[derive(Module, Debug)]
pub struct Transformer {
    pub encoder: Encoder,
    pub embeddings: Embeddings,
    pub decoder: Decoder,
}

/// Linear → ReLU → Linear → ReLU → Linear.
#[derive(Module, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

/// CATR: `backbone`, `input_proj`, `transformer`, `mlp`, as in the checkpoint (whose
/// `backbone.0.body.` prefix and `downsample.0/1` are renamed on load).
#[derive(Module, Debug)]
pub struct Catr {
    pub backbone: ResNet,
    pub input_proj: Conv2d,
    pub transformer: Transformer,
    pub mlp: Mlp,
}

impl CatrConfig {
    pub fn init(&self, device: &Device) -> Catr {
        let d = self.hidden_dim;
        let (heads, ffn) = (self.nheads, self.dim_feedforward);
        Catr {
            backbone: ResNet::new(self, device),
            input_proj: Conv2dConfig::new([self.backbone_channels(), d], [1, 1]).init(device),
            transformer: Transformer {
                encoder: Encoder {
                    layers: (0..self.enc_layers)
                        .map(|_| EncoderLayer::new(d, heads, ffn, device))
                        .collect(),
                    norm: LayerNormConfig::new(d).init(device),
                },
                embeddings: Embeddings {
                    word_embeddings: EmbeddingConfig::new(self.vocab_size, d).init(device),
                    position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, d).init(device),
                    layer_norm: LayerNormConfig::new(d)
                        .with_epsilon(self.layer_norm_eps)
                        .init(device),
                    layer_norm_eps: self.layer_norm_eps,
                },
                decoder: Decoder {
                    layers: (0..self.dec_layers)
                        .map(|_| DecoderLayer::new(d, heads, ffn, device))
                        .collect(),
                    norm: LayerNormConfig::new(d).init(device),
                },
            },
            mlp: Mlp {
                layers: vec![
                    LinearConfig::new(d, 2 * d).init(device),
                    LinearConfig::new(2 * d, 2 * d).init(device),
                    LinearConfig::new(2 * d, self.vocab_size).init(device),
                ],
            },
        }
    }
}

impl Catr {
    /// Image features after the encoder, `[1, cells, d]`, their sine positions, and the grid.
    pub fn encode(&self, image: Tensor<4>) -> (Tensor<3>, Tensor<3>, (usize, usize)) {
        let device = image.device();
        let features = self.input_proj.forward(self.backbone.forward(image)); // [1, d, hf, wf]
        let [batch, d, hf, wf] = features.dims();
        let src = features.reshape([batch, d, hf * wf]).swap_dims(1, 2); // [1, cells, d]
        let pos = Tensor::<3>::from_data(
            TensorData::new(sine_position(hf, wf, d), [1, hf * wf, d]),
            &device,
        );
        let encoder = &self.transformer.encoder;
        let x = encoder
            .layers
            .iter()
            .fold(src, |x, layer| layer.forward(x, pos.clone()));
        (encoder.norm.forward(x), pos, (hf, wf))
    }

    /// Logits `[batch, len, vocab]` of the head for decoder output `t` `[batch, len, d]`.
    pub(crate) fn head(&self, t: Tensor<3>) -> Tensor<3> {
        let [a, b, c] = self.head_layers();
        c.forward(relu(b.forward(relu(a.forward(t)))))
    }

    pub(crate) fn head_layers(&self) -> [&Linear; 3] {
        let [a, b, c] = &self.mlp.layers[..] else {
            panic!("CATR's head has three layers")
        };
        [a, b, c]
    }

    /// Teacher forcing, as in training: `images` `[batch, 3, h, w]` (one size) and the input
    /// tokens `[batch, len]` (`[CLS]` then the caption, padded). Position `k` sees tokens
    /// `0..=k` only, so padding after a caption cannot change its logits and needs no key
    /// mask. Returns logits `[batch, len, vocab]` and the last decoder layer's
    /// cross-attention averaged over heads, `[batch, len, cells]`.
    pub fn forward(&self, images: Tensor<4>, tokens: Tensor<2, Int>) -> (Tensor<3>, Tensor<3>) {
        let device = images.device();
        let [_, len] = tokens.dims();
        let (memory, pos, _) = self.encode(images);
        let emb = &self.transformer.embeddings;
        let [_, d] = emb.position_embeddings.weight.dims();
        let qpos = emb
            .position_embeddings
            .weight
            .val()
            .narrow(0, 0, len)
            .reshape([1, len, d]);
        let mut t = emb
            .layer_norm
            .forward(emb.word_embeddings.forward(tokens) + qpos.clone()); // [batch, len, d]
        let mask = causal_mask(len, &device);
        let mut weights = None;
        for layer in &self.transformer.decoder.layers {
            let (out, w) = layer.forward(t, qpos.clone(), memory.clone(), pos.clone(), mask.clone());
            t = out;
            weights = Some(w);
        }
        let logits = self.head(self.transformer.decoder.norm.forward(t));
        (logits, weights.expect("at least one decoder layer"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny() -> CatrConfig {
        CatrConfig::from_partial(&serde_json::json!({
            "resnet_blocks": [1, 1, 1, 1], "resnet_width": 4, "hidden_dim": 16, "nheads": 2,
            "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 32, "vocab_size": 120,
            "max_position_embeddings": 12
        }))
        .unwrap()
    }

    #[test]
    fn teacher_forcing_matches_greedy_decoding_step_by_step() {
        let device = Device::flex();
        let _draws = gaze_nn::device::seeded(&device, 3);
        let model = tiny().init(&device);
        // A wide image: the grid is 3 x 5, not square.
        let image = Tensor::<4>::random(
            [1, 3, 48, 80],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let greedy = model.caption(image.clone(), 6);
        assert_eq!(greedy.grid, (3, 5));
        assert!(greedy.tokens.len() >= 3, "{:?}", greedy.tokens);
        let mut input = vec![CLS as i64];
        input.extend(greedy.tokens.iter().map(|&t| t as i64));
        let len = input.len();
        // Padding after the caption must not change anything before it.
        input.extend([0, 7]);
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(input.clone(), [1, len + 2]), &device);
        let (logits, attention) = model.forward(image, tokens);
        let logits: Vec<f32> = logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let attention: Vec<f32> = attention
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        let vocab = 120;
        let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(max_diff(&logits[..vocab], &greedy.first_logits) < 1e-5);
        for (k, row) in greedy.attention.iter().enumerate().take(len) {
            assert!(max_diff(&attention[k * 15..][..15], row) < 1e-5, "step {k}");
            let next = gaze_nn::argmax(&logits[k * vocab..][..vocab]);
            assert_eq!(Some(&next), greedy.tokens.get(k).or(Some(&SEP)), "step {k}");
        }
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_batch_gives_each_image_its_own_result() {
        let device = Device::flex();
        let _draws = gaze_nn::device::seeded(&device, 5);
        let model = super::tests::tiny().init(&device);
        let images = Tensor::<4>::random(
            [2, 3, 32, 48],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(vec![101i64, 104, 105, 101, 110, 0], [2, 3]),
            &device,
        );
        let (logits, attention) = model.forward(images.clone(), tokens.clone());
        for i in 0..2 {
            let (one, att) = model.forward(images.clone().narrow(0, i, 1), tokens.clone().narrow(0, i, 1));
            let diff = (logits.clone().narrow(0, i, 1) - one)
                .abs()
                .max()
                .into_scalar::<f32>();
            let att_diff = (attention.clone().narrow(0, i, 1) - att)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-5 && att_diff < 1e-6, "image {i}: {diff} {att_diff}");
        }
    }
}
