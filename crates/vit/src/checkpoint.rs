//! timm checkpoints in and out.
//!
//! Reads `.safetensors` and PyTorch `.pth` files (zip or legacy pickle; a bare state dict or
//! one under `state_dict` / `model`), checks every tensor name and shape against the model
//! before loading, and writes `.safetensors` with timm's key names and `[out, in]` Linear
//! weights, so a model trained here loads back with `timm.create_model(...,
//! pretrained_cfg_overlay=dict(file=...))` or `load_state_dict(strict=True)`.
//! The architecture and preprocessing ride along in the safetensors metadata (`gaze.config`).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::{
    BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::Device;

use crate::{VisionTransformer, VitConfig};

/// Metadata key under which the [`VitConfig`] is stored as JSON.
pub const CONFIG_METADATA_KEY: &str = "gaze.config";

/// Why a checkpoint could not become a model. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "{path}: does not fit {model}: {details}. Pick the matching --model, or a checkpoint of this model"
    )]
    Mismatch {
        path: PathBuf,
        model: String,
        details: String,
    },
    #[error("{path}: could not write: {message}")]
    Write { path: PathBuf, message: String },
}

/// On-disk container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// `torch.save` output; the state dict may sit under a top-level key.
    Pytorch {
        top_level_key: Option<String>,
    },
}

/// What a checkpoint holds, read without loading the tensor data.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    /// Tensor names (timm keys, any top-level key stripped) and shapes.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// The config stored by [`save_vit`], if this file was written by gaze.
    pub config: Option<VitConfig>,
    /// A safetensors file's `__metadata__` (empty for PyTorch files).
    pub metadata: BTreeMap<String, String>,
}

/// What to do with the classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadInit {
    /// Keep the checkpoint's head; the class count comes from the file.
    FromCheckpoint,
    /// Ignore the checkpoint's head and start a new one (fine-tuning on another label set).
    Fresh { num_classes: usize },
}

impl Checkpoint {
    /// Reads the names and shapes in `path`.
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let read_err = |message: String| LoadError::Read {
            path: path.to_path_buf(),
            message,
        };
        let mut magic = [0u8; 9];
        let mut file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let got = file.read(&mut magic).map_err(|e| read_err(e.to_string()))?;
        if got == 9 && magic[8] == b'{' {
            return Self::open_safetensors(path, file, u64::from_le_bytes(magic[..8].try_into().unwrap()));
        }
        let reader = burn::store::pytorch_reader::PytorchReader::new(path).map_err(|e| {
            read_err(format!(
                "neither a safetensors file nor a PyTorch checkpoint ({e}); expected timm weights saved with safetensors or torch.save"
            ))
        })?;
        let mut shapes: BTreeMap<String, Vec<usize>> = reader
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), t.shape().to_vec()))
            .collect();
        // Training checkpoints keep the weights under `state_dict` or `model` beside other
        // entries (optimizer state, epoch); only the weights are read.
        let mut top_level_key = None;
        for key in ["state_dict", "model"] {
            let prefix = format!("{key}.");
            if shapes.keys().any(|k| k.starts_with(&prefix)) {
                shapes = shapes
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
                    .collect();
                top_level_key = Some(key.to_string());
                break;
            }
        }
        if shapes.is_empty() {
            return Err(read_err("holds no tensors".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Pytorch { top_level_key },
            shapes,
            config: None,
            metadata: BTreeMap::new(),
        })
    }

    fn open_safetensors(path: &Path, mut file: std::fs::File, header_len: u64) -> Result<Self, LoadError> {
        let read_err = |message: String| LoadError::Read {
            path: path.to_path_buf(),
            message,
        };
        let file_len = file.metadata().map_err(|e| read_err(e.to_string()))?.len();
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(read_err(
                "safetensors header is longer than the file (truncated?)".into(),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(8))
            .and_then(|_| file.read_exact(&mut header))
            .map_err(|e| read_err(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct Entry {
            shape: Vec<usize>,
        }
        let mut json: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| read_err(format!("bad safetensors header: {e}")))?;
        let metadata: BTreeMap<String, String> = json
            .remove("__metadata__")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| read_err(format!("bad safetensors metadata: {e}")))?
            .unwrap_or_default();
        let config = metadata
            .get(CONFIG_METADATA_KEY)
            .map(|s| serde_json::from_str::<VitConfig>(s))
            .transpose()
            .map_err(|e| read_err(format!("bad {CONFIG_METADATA_KEY} metadata: {e}")))?;
        let shapes = json
            .into_iter()
            .map(|(k, v)| serde_json::from_value::<Entry>(v).map(|e| (k, e.shape)))
            .collect::<Result<_, _>>()
            .map_err(|e| read_err(format!("bad safetensors header: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            shapes,
            config,
            metadata,
        })
    }

    /// Classes of the stored head (`head.weight` is `[classes, dim]`).
    pub fn num_classes(&self) -> Option<usize> {
        self.shapes.get("head.weight").map(|s| s[0])
    }

    /// Compares with the tensors a model expects (names and PyTorch shapes, e.g. from
    /// [`state_dict_shapes`]); `None` when they agree, else a one-line list of what is
    /// missing, unexpected or wrongly shaped. With `ignore_head`, `head.*` is not compared.
    pub fn mismatch(&self, expected: &BTreeMap<String, Vec<usize>>, ignore_head: bool) -> Option<String> {
        let skip = |k: &str| ignore_head && k.starts_with("head.");
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !skip(k) && !self.shapes.contains_key(*k))
            .collect();
        let unexpected: Vec<_> = self
            .shapes
            .keys()
            .filter(|k| !skip(k) && !expected.contains_key(*k))
            .collect();
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(k, _)| !skip(k))
            .filter_map(|(k, want)| {
                let have = self.shapes.get(k)?;
                (have != want).then(|| format!("{k} is {have:?}, expected {want:?}"))
            })
            .collect();
        let mut parts = Vec::new();
        let list = |v: &[&String]| {
            let shown: Vec<_> = v.iter().take(6).map(|s| s.as_str()).collect();
            let more = if v.len() > 6 {
                format!(" and {} more", v.len() - 6)
            } else {
                String::new()
            };
            format!("{}{more}", shown.join(", "))
        };
        if !missing.is_empty() {
            parts.push(format!("{} missing ({})", missing.len(), list(&missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("{} unexpected ({})", unexpected.len(), list(&unexpected)));
        }
        if !wrong.is_empty() {
            let shown: Vec<_> = wrong.iter().take(4).cloned().collect();
            let more = if wrong.len() > 4 {
                format!(" and {} more", wrong.len() - 4)
            } else {
                String::new()
            };
            parts.push(format!(
                "{} wrongly shaped ({}{more})",
                wrong.len(),
                shown.join("; ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Tensor names and shapes of `model` as PyTorch/timm would list them.
pub fn state_dict_shapes<M: ModuleSnapshot>(model: &M) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect()
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
    let checkpoint = Checkpoint::open(path)?;
    let num_classes = match head {
        HeadInit::Fresh { num_classes } => num_classes,
        HeadInit::FromCheckpoint => checkpoint.num_classes().ok_or_else(|| LoadError::Mismatch {
            path: path.to_path_buf(),
            model: describe(config),
            details: "it has no head.weight".into(),
        })?,
    };
    let config = config.with_classes(num_classes);
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
                .with_from_adapter(PyTorchToBurnAdapter)
                .allow_partial(fresh_head);
            if fresh_head {
                store = store.with_predicate(not_head);
            }
            model.load_from(&mut store).map_err(|e| read_err(e.to_string()))?
        }
        Format::Pytorch { top_level_key } => {
            let mut store = PytorchStore::from_file(path).allow_partial(fresh_head);
            if let Some(key) = top_level_key {
                store = store.with_top_level_key(key);
            }
            if fresh_head {
                store = store.with_predicate(not_head);
            }
            model.load_from(&mut store).map_err(|e| read_err(e.to_string()))?
        }
    };
    let missing: Vec<_> = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !(fresh_head && p.starts_with("head.")))
        .collect();
    if !result.errors.is_empty() || !missing.is_empty() {
        let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            model: describe(&config),
            details: format!("{} {}", errors.join("; "), missing.join(", "))
                .trim()
                .to_string(),
        });
    }
    Ok((model, config))
}

/// Writes `model` as `.safetensors` with timm key names and the config in the metadata.
/// The file appears atomically (written beside `path`, then renamed).
pub fn save_vit(model: &VisionTransformer, config: &VitConfig, path: &Path) -> Result<(), LoadError> {
    let write_err = |message: String| LoadError::Write {
        path: path.to_path_buf(),
        message,
    };
    let config_json = serde_json::to_string(config).map_err(|e| write_err(e.to_string()))?;
    write_then_rename(path, |tmp| {
        let mut store = SafetensorsStore::from_file(tmp)
            .with_to_adapter(BurnToPyTorchAdapter)
            .metadata(CONFIG_METADATA_KEY, config_json)
            .overwrite(true);
        model.save_into(&mut store).map_err(|e| e.to_string())
    })
    .map_err(write_err)
}

/// Runs `write` on a temporary sibling of `path`, then renames it into place, so that a
/// reader never sees a half-written `path` (burn's stores write in place).
pub fn write_then_rename(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), String> {
    let name = path.file_name().ok_or("not a file path")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Loads `path` for inference: the architecture is the preset `model` if given, else the
/// config stored in the file by gaze, else `vit_small_patch16_384`; the head is the file's.
pub fn load_pretrained(
    path: &Path,
    model: Option<&str>,
    device: &Device,
) -> Result<(VisionTransformer, VitConfig), LoadError> {
    let config = match model {
        Some(name) => VitConfig::preset(name).ok_or_else(|| LoadError::Read {
            path: path.to_path_buf(),
            message: format!("unknown model `{name}`; known: {}", crate::PRESETS.join(", ")),
        })?,
        None => Checkpoint::open(path)?.config.unwrap_or_else(VitConfig::new),
    };
    load_vit(path, &config, HeadInit::FromCheckpoint, device)
}
