//! timm checkpoints in and out.
//!
//! Reads `.safetensors` and PyTorch `.pth` files ([`Checkpoint`]), checks every tensor name
//! and shape against the model before loading, and writes `.safetensors` with timm's key names and `[out, in]` Linear
//! weights, so a model trained here loads back with `timm.create_model(...,
//! pretrained_cfg_overlay=dict(file=...))` or `load_state_dict(strict=True)`.
//! The architecture and preprocessing ride along in the safetensors metadata (`gaze.config`).

use std::path::Path;

use burn::store::{ModuleSnapshot, PathFilter, PytorchStore, SafetensorsStore};
use burn::tensor::Device;
use gaze_nn::checkpoint::{
    Checkpoint, Format, LoadError, apply_pytorch, from_pytorch_as_f32, read_metadata, save_safetensors,
    state_dict_shapes, unapplied,
};

use crate::{VisionTransformer, VitConfig};

/// Metadata key under which the [`VitConfig`] is stored as JSON.
pub const CONFIG_METADATA_KEY: &str = "gaze.config";

/// What to do with the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInit {
    /// Keep the checkpoint's head; the class count comes from the file.
    FromCheckpoint,
    /// Ignore the checkpoint's head and start a new one (fine-tuning on another label set).
    Fresh { num_classes: usize },
}

/// Classes of the stored head (`head.weight` is `[classes, dim]`).
pub fn head_classes(checkpoint: &Checkpoint) -> Option<usize> {
    checkpoint.shapes.get("head.weight").map(|s| s[0])
}

/// The architecture stored by [`save_vit`], if `checkpoint` was written by gaze.
pub fn stored_vit_config(checkpoint: &Checkpoint) -> Result<Option<VitConfig>, LoadError> {
    let config: Option<VitConfig> = read_metadata(checkpoint, CONFIG_METADATA_KEY)?;
    if let Some(Err(e)) = config.as_ref().map(VitConfig::validate) {
        return Err(LoadError::Read {
            path: checkpoint.path.clone(),
            message: format!("the architecture in its {CONFIG_METADATA_KEY} metadata is unusable: {e}"),
        });
    }
    Ok(config)
}

fn describe(config: &VitConfig) -> String {
    format!(
        "a ViT with dim {}, depth {}, {} heads, patch {}, input {}x{}",
        config.embed_dim,
        config.depth,
        config.num_heads,
        config.patch_size,
        config.img_size[0],
        config.img_size[1]
    )
}

/// Builds `config`'s model on `device` with the weights in `path`. With
/// [`HeadInit::FromCheckpoint`] the class count is taken from the file.
pub fn load_vit(
    path: &Path,
    config: &VitConfig,
    head: HeadInit,
    device: &Device,
) -> Result<(VisionTransformer, VitConfig), LoadError> {
    load_vit_from(&Checkpoint::open(path)?, config, head, device)
}

/// [`load_vit`] from a checkpoint whose header the caller has already read.
pub fn load_vit_from(
    checkpoint: &Checkpoint,
    config: &VitConfig,
    head: HeadInit,
    device: &Device,
) -> Result<(VisionTransformer, VitConfig), LoadError> {
    let path = checkpoint.path.as_path();
    let num_classes = match head {
        HeadInit::Fresh { num_classes } => num_classes,
        HeadInit::FromCheckpoint => head_classes(&checkpoint).ok_or_else(|| LoadError::Mismatch {
            path: path.to_path_buf(),
            model: describe(config),
            details: "it has no head.weight".into(),
        })?,
    };
    let config = config.with_classes(num_classes);
    let mismatch = |details: String| LoadError::Mismatch {
        path: path.to_path_buf(),
        model: describe(&config),
        details,
    };
    config.validate().map_err(mismatch)?;
    let (d, c, p) = (config.embed_dim, config.in_chans, config.patch_size);
    let hidden = (d as f64 * config.mlp_ratio) as usize;
    let sizes = [
        ("pos_embed", vec![1, config.num_tokens(), d]),
        ("patch_embed.proj.weight", vec![d, c, p, p]),
        ("blocks.0.attn.qkv.weight", vec![3 * d, d]),
        ("blocks.0.mlp.fc1.weight", vec![hidden, d]),
    ];
    if let Some(details) = checkpoint.size_mismatch(&sizes, &[("blocks.", config.depth)]) {
        return Err(mismatch(details));
    }
    let mut model = config.init(device);
    let fresh_head = matches!(head, HeadInit::Fresh { .. });
    if let Some(details) = checkpoint.mismatch(&state_dict_shapes(&model), fresh_head) {
        return Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            model: describe(&config),
            details,
        });
    }
    fn not_head(path: &str, _container: &str) -> bool {
        !path.starts_with("head.")
    }
    let read_err = |message: String| LoadError::Read {
        path: path.to_path_buf(),
        message,
    };
    let result = match &checkpoint.format {
        Format::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(from_pytorch_as_f32())
                .allow_partial(fresh_head);
            if fresh_head {
                store = store.with_predicate(not_head);
            }
            model.load_from(&mut store).map_err(|e| read_err(e.to_string()))?
        }
        Format::Pytorch { top_level_key } => {
            let mut store = PytorchStore::from_file(path);
            if let Some(key) = top_level_key {
                store = store.with_top_level_key(key);
            }
            let filter = fresh_head.then(|| PathFilter::new().with_predicate(not_head));
            apply_pytorch(&mut model, store, filter).map_err(read_err)?
        }
    };
    if let Some(details) = unapplied(&result, |p| !(fresh_head && p.starts_with("head."))) {
        return Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            model: describe(&config),
            details,
        });
    }
    Ok((model, config))
}

/// Writes `model` as `.safetensors` with timm key names and the config in the metadata.
/// The file appears atomically (written beside `path`, then renamed).
pub fn save_vit(model: &VisionTransformer, config: &VitConfig, path: &Path) -> Result<(), LoadError> {
    let json = serde_json::to_string(config).map_err(|e| LoadError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    save_safetensors(model, path, (CONFIG_METADATA_KEY, json), [])
}

/// Loads `path` for inference. The architecture, in order: the timm name `model` if given;
/// the timm `config.json` `model_config` if given; the config stored in the file by gaze; a
/// `config.json` beside the file (a Hub folder); `vit_small_patch16_384`. The head is the
/// file's.
pub fn load_pretrained(
    path: &Path,
    model: Option<&str>,
    model_config: Option<&Path>,
    device: &Device,
) -> Result<(VisionTransformer, VitConfig), LoadError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |message| LoadError::Read { path, message }
    };
    let checkpoint = Checkpoint::open(path)?;
    let beside = path.with_file_name("config.json");
    let config = match (model, model_config) {
        (Some(name), _) => VitConfig::preset(name).map_err(read_err(path))?,
        (None, Some(file)) => crate::read_hub_config(file).map_err(read_err(file))?,
        (None, None) => match stored_vit_config(&checkpoint)? {
            Some(stored) => stored,
            None if beside.is_file() => crate::read_hub_config(&beside).map_err(read_err(&beside))?,
            None => VitConfig::new(),
        },
    };
    load_vit_from(&checkpoint, &config, HeadInit::FromCheckpoint, device)
}
