//! CATR image captioning ("CATR: Image Captioning with Transformers", Saahil Uppal, 2020,
//! <https://github.com/saahiluppal/catr>), a DETR-style model: a ResNet backbone with frozen
//! batch norm, a pre-norm transformer encoder over the image features and a decoder over BERT
//! word pieces, and a 3-layer MLP head. Laid out like the published checkpoint so that it
//! loads by name.
//!
//! * [`CatrConfig`] with the published `v3` preset and small variants for tests.
//! * [`Catr::caption`] decodes greedily with the encoder run once and a key/value cache,
//!   returning per step the last decoder layer's head-averaged cross-attention;
//!   [`Catr::captioner`] prepares that once for many images (on the `flex` CPU backend the
//!   decoder then runs on plain slices).
//! * [`Vocab`] turns word-piece ids into text as `BertTokenizer.decode` (transformers 3.0.2).
//! * [`train`] trains one from scratch with teacher forcing (the synthetic caption task).
//! * [`load_catr`] reads `torch.save({'model': state_dict})` files (zip or legacy pickle).

mod backbone;
mod captioner;
mod checkpoint;
mod config;
mod cpu_decoder;
mod greedy;
mod model;
mod preprocess;
mod text;
pub mod train;
mod transformer;

pub use backbone::{Bottleneck, FrozenBatchNorm2d, ResNet};
pub use captioner::{CaptionOutput, Captioner};
pub use checkpoint::{CATR_METADATA_KEY, CaptionError, checkpoint_key, load_catr, save_catr, stored_config};
pub use config::CatrConfig;
pub use model::Catr;
pub use preprocess::{catr_size, preprocess};
pub use text::{UNK, Vocab, VocabError, Word, words};
pub use transformer::{DecoderLayer, EncoderLayer, MultiheadAttention};
