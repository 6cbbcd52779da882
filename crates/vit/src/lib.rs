//! Vision Transformer, as in "An Image is Worth 16x16 Words: Transformers for Image
//! Recognition at Scale" (Dosovitskiy et al., 2021, <https://arxiv.org/abs/2010.11929>),
//! laid out exactly like timm's `VisionTransformer` so that timm checkpoints load by name.
//!
//! * [`VitConfig`] holds the architecture and the preprocessing that belongs to its weights,
//!   by timm name (`VitConfig::preset("vit_small_patch16_384.augreg_in21k_ft_in1k")`); [`timm`]
//!   holds the generated table of timm's ViT names and reads a Hub `config.json`.
//! * [`VisionTransformer`] has a fast forward and one that returns every block's attention.
//! * [`checkpoint`] reads timm `.safetensors` and `.pth` files and writes `.safetensors` with
//!   timm's key names, so weights travel both ways.
//! * [`resample_pos_embed`] adapts position embeddings to another grid as timm does.
//! * [`explain`] runs one image and keeps what figures need: the view, the crop, every
//!   block's attention and the class probabilities.

pub mod checkpoint;
mod config;
pub mod explain;
pub mod infer;
pub mod metrics;
mod model;
mod pos_embed;
pub mod timm;
pub mod train;

pub use checkpoint::{
    HeadInit, head_classes, load_pretrained, load_vit, load_vit_from, save_vit, stored_vit_config,
};
pub use config::VitConfig;
pub use explain::{Explanation, explain};
pub use infer::classify_files;
pub use metrics::{ClassificationMetrics, classification_metrics, top_classes};
pub use model::{Attention, Block, Mlp, PatchEmbed, VisionTransformer, VitOutput};
pub use pos_embed::resample_pos_embed;
pub use timm::{TimmModel, find_timm_model, hub_config_json, read_hub_config, timm_models};
