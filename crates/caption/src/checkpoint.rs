//! Loading the published CATR checkpoint: `torch.save({'model': state_dict})`, zip or legacy,
//! or the same state dict as `.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, PytorchStore, SafetensorsStore};
use burn::tensor::Device;
use gaze_nn::checkpoint::{
    Checkpoint, Format, LoadError, apply_pytorch, from_pytorch_as_f32, read_metadata, save_safetensors,
    state_dict_shapes, unapplied,
};

use crate::{Catr, CatrConfig};

/// Why captioning could not start or finish. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error(transparent)]
    Vocab(#[from] crate::text::VocabError),
    #[error(transparent)]
    Data(#[from] gaze_data::DataError),
}

/// Module path spellings and the published checkpoint's: the ResNet sits under
/// `backbone.0.body.`, a shortcut's convolution and batch norm are `downsample.0/1`, and the
/// decoder embeddings' norm is BERT's `LayerNorm`.
const SPELLINGS: [(&str, &str); 4] = [
    ("backbone.", "backbone.0.body."),
    ("downsample_conv.", "downsample.0."),
    ("downsample_bn.", "downsample.1."),
    ("embeddings.layer_norm.", "embeddings.LayerNorm."),
];

/// Checkpoint spelling of a module path; see [`SPELLINGS`].
pub fn checkpoint_key(name: &str) -> String {
    SPELLINGS
        .iter()
        .fold(name.to_string(), |name, (module, checkpoint)| {
            name.replacen(module, checkpoint, 1)
        })
}

/// `(pattern, replacement)` regexes from checkpoint to module spellings (`to_module`) or back.
fn remappings(to_module: bool) -> impl Iterator<Item = (String, String)> {
    SPELLINGS.iter().map(move |&(module, checkpoint)| {
        let (from, to) = if to_module {
            (checkpoint, module)
        } else {
            (module, checkpoint)
        };
        // The backbone prefix only at the start; the others wherever they occur.
        let anchor = if module == "backbone." { "^" } else { "" };
        (format!("{anchor}{}", from.replace('.', r"\.")), to.to_string())
    })
}

/// Metadata key under which gaze stores the [`CatrConfig`] of a trained model as JSON.
pub const CATR_METADATA_KEY: &str = "gaze.catr";

/// The architecture stored in a safetensors file written by [`save_catr`], if any.
pub fn stored_config(path: &Path) -> Result<Option<CatrConfig>, CaptionError> {
    let config: Option<CatrConfig> = read_metadata(&Checkpoint::open(path)?, CATR_METADATA_KEY)?;
    if let Some(Err(e)) = config.as_ref().map(CatrConfig::validate) {
        return Err(CaptionError::Mismatch {
            path: path.to_path_buf(),
            message: format!("the architecture in its {CATR_METADATA_KEY} metadata is unusable: {e}"),
        });
    }
    Ok(config)
}

/// Writes `model` as safetensors under the published checkpoint's names, with `config` in the
/// metadata so that the file alone rebuilds the model.
pub fn save_catr(model: &Catr, config: &CatrConfig, path: &Path) -> Result<(), CaptionError> {
    let json = serde_json::to_string(config).map_err(|e| CaptionError::Mismatch {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(save_safetensors(
        model,
        path,
        (CATR_METADATA_KEY, json),
        remappings(false),
    )?)
}

/// Builds `config`'s model with the weights in `path`, after checking every name and shape.
pub fn load_catr(path: &Path, config: &CatrConfig, device: &Device) -> Result<Catr, CaptionError> {
    let checkpoint = Checkpoint::open(path)?;
    let mismatch = |message: String| CaptionError::Mismatch {
        path: path.to_path_buf(),
        message,
    };
    config
        .validate()
        .map_err(|e| mismatch(format!("unusable architecture: {e}")))?;
    let (h, t) = (config.hidden_dim, "transformer.");
    let sizes = [
        (
            &*format!("{t}embeddings.word_embeddings.weight"),
            vec![config.vocab_size, h],
        ),
        (
            &*format!("{t}embeddings.position_embeddings.weight"),
            vec![config.max_position_embeddings, h],
        ),
        (
            &*format!("{t}encoder.layers.0.linear1.weight"),
            vec![config.dim_feedforward, h],
        ),
    ];
    let stages: Vec<(String, usize)> = (0..4)
        .map(|i| {
            (
                format!("backbone.0.body.layer{}.", i + 1),
                config.resnet_blocks[i],
            )
        })
        .collect();
    let mut layers = vec![
        ("transformer.encoder.layers.", config.enc_layers),
        ("transformer.decoder.layers.", config.dec_layers),
    ];
    layers.extend(stages.iter().map(|(p, n)| (p.as_str(), *n)));
    if let Some(details) = checkpoint.size_mismatch(&sizes, &layers) {
        return Err(mismatch(format!("a CATR checkpoint of another size: {details}")));
    }
    let mut model = config.init(device);
    let expected: BTreeMap<String, Vec<usize>> = state_dict_shapes(&model)
        .into_iter()
        .map(|(k, v)| (checkpoint_key(&k), v))
        .collect();
    if let Some(details) = checkpoint.mismatch(&expected, false) {
        let hint = if checkpoint.shapes.keys().any(|k| k.starts_with("transformer.")) {
            "a CATR checkpoint of another size (or a vocabulary of another size)"
        } else {
            "not a CATR checkpoint"
        };
        return Err(mismatch(format!("{hint}: {details}")));
    }
    let result = match &checkpoint.format {
        Format::Pytorch { top_level_key } => {
            let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
            for (from, to) in remappings(true) {
                store = store.with_key_remapping(&from, &to);
            }
            if let Some(key) = top_level_key {
                store = store.with_top_level_key(key);
            }
            apply_pytorch(&mut model, store, None).map_err(mismatch)?
        }
        // The same state dict converted with `safetensors.torch.save_file`.
        Format::Safetensors => {
            let mut store = SafetensorsStore::from_file(path).with_from_adapter(from_pytorch_as_f32());
            for (from, to) in remappings(true) {
                store = store.with_key_remapping(&from, &to);
            }
            model.load_from(&mut store).map_err(|e| mismatch(e.to_string()))?
        }
    };
    if let Some(details) = unapplied(&result, |_| true) {
        return Err(mismatch(details));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_models_load_back_with_their_config() {
        let device = Device::flex();
        let config = CatrConfig::from_partial(&serde_json::json!({
            "resnet_blocks": [1, 1, 1, 1], "resnet_width": 4, "hidden_dim": 16, "nheads": 2,
            "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 32, "vocab_size": 110,
            "max_position_embeddings": 8, "max_dim": 64
        }))
        .unwrap();
        let _draws = gaze_nn::device::seeded(&device, 1);
        let model = config.init(&device);
        let path = std::env::temp_dir().join(format!("gaze-catr-{}.safetensors", std::process::id()));
        save_catr(&model, &config, &path).unwrap();
        let stored = stored_config(&path).unwrap().unwrap();
        assert_eq!(stored, config);
        // Every tensor under the published checkpoint's name.
        let names = Checkpoint::open(&path).unwrap().shapes;
        assert!(names.contains_key("backbone.0.body.layer1.0.downsample.0.weight"));
        assert!(names.contains_key("transformer.embeddings.LayerNorm.weight"));
        let loaded = load_catr(&path, &stored, &device).unwrap();
        let image =
            burn::tensor::Tensor::<4>::random([1, 3, 32, 48], burn::tensor::Distribution::Default, &device);
        let (a, b) = (model.caption(image.clone(), 6), loaded.caption(image, 6));
        assert_eq!(a, b);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn names_map_to_the_checkpoint() {
        assert_eq!(
            checkpoint_key("backbone.layer1.0.downsample_conv.weight"),
            "backbone.0.body.layer1.0.downsample.0.weight"
        );
        assert_eq!(
            checkpoint_key("backbone.layer4.2.bn3.running_var"),
            "backbone.0.body.layer4.2.bn3.running_var"
        );
        assert_eq!(
            checkpoint_key("transformer.encoder.norm.weight"),
            "transformer.encoder.norm.weight"
        );
    }
}
