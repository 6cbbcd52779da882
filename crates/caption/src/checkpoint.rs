//! Loading the published CATR checkpoint: `torch.save({'model': state_dict})`, zip or legacy,
//! or the same state dict as `.safetensors`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};
use burn::tensor::Device;
use gaze_vit::checkpoint::{Checkpoint, Format, state_dict_shapes};

use crate::{Caption, CatrConfig};

/// Why captioning could not start or finish. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    #[error(transparent)]
    Load(#[from] gaze_vit::LoadError),
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error(transparent)]
    Vocab(#[from] crate::text::VocabError),
    #[error(transparent)]
    Data(#[from] gaze_data::DataError),
}

/// Checkpoint spelling of a module path: `backbone.0.body.` before the ResNet,
/// `downsample.0/1` for the shortcut's convolution and batch norm, BERT's `LayerNorm`.
pub fn checkpoint_key(name: &str) -> String {
    let name = name.replacen("backbone.", "backbone.0.body.", 1);
    name.replace("downsample_conv.", "downsample.0.")
        .replace("downsample_bn.", "downsample.1.")
        .replace("embeddings.layer_norm.", "embeddings.LayerNorm.")
}

/// Checkpoint spellings (regex) and the module paths they load into; see [`checkpoint_key`].
const RENAMES: [(&str, &str); 4] = [
    (r"^backbone\.0\.body\.", "backbone."),
    (r"downsample\.0\.", "downsample_conv."),
    (r"downsample\.1\.", "downsample_bn."),
    (r"embeddings\.LayerNorm\.", "embeddings.layer_norm."),
];

/// Builds `config`'s model with the weights in `path`, after checking every name and shape.
pub fn load_catr(path: &Path, config: &CatrConfig, device: &Device) -> Result<Caption, CaptionError> {
    let checkpoint = Checkpoint::open(path)?;
    let mismatch = |message: String| CaptionError::Mismatch {
        path: path.to_path_buf(),
        message,
    };
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
            for (from, to) in RENAMES {
                store = store.with_key_remapping(from, to);
            }
            if let Some(key) = top_level_key {
                store = store.with_top_level_key(key);
            }
            model.load_from(&mut store).map_err(|e| mismatch(e.to_string()))?
        }
        // The same state dict converted with `safetensors.torch.save_file`.
        Format::Safetensors => {
            let mut store = SafetensorsStore::from_file(path).with_from_adapter(PyTorchToBurnAdapter);
            for (from, to) in RENAMES {
                store = store.with_key_remapping(from, to);
            }
            model.load_from(&mut store).map_err(|e| mismatch(e.to_string()))?
        }
    };
    if !result.errors.is_empty() || !result.missing.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        let missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(mismatch(
            format!("{} {}", errors.join("; "), missing.join(", "))
                .trim()
                .to_string(),
        ));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

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
