//! What a checkpoint holds, read without loading its tensors: `.safetensors` files and
//! PyTorch `.pth` files (zip or legacy pickle; a bare state dict or one under `state_dict`
//! / `model`). Models check every name and shape against what they expect before loading.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::{
    ApplyResult, BurnToPyTorchAdapter, ChainAdapter, FloatCastAdapter, ModuleAdapter, ModuleSnapshot,
    ModuleStore, PathFilter, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use burn::tensor::DType;

/// Why a checkpoint could not become a model. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: does not fit {model}: {details}")]
    Mismatch {
        path: PathBuf,
        model: String,
        details: String,
    },
    #[error("{path}: could not write: {message}")]
    Write { path: PathBuf, message: String },
}

/// The most memory an architecture may claim, weights and one input's activations: room for
/// ViT-g and ViT-L at 384 pixels, not for the sizes that a damaged or hostile file states.
pub const MAX_MODEL_BYTES: u64 = 16 << 30;

/// Refuses an architecture size of 0: the error names the first such field of `sizes`.
pub fn check_positive(sizes: &[(&str, usize)]) -> Result<(), String> {
    match sizes.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(format!("{name} is 0; it must be positive")),
        None => Ok(()),
    }
}

/// Refuses an architecture whose estimated memory (`bytes`, computed in floating point so
/// that no size overflows) is over [`MAX_MODEL_BYTES`].
pub fn check_model_bytes(bytes: f64) -> Result<(), String> {
    if bytes > MAX_MODEL_BYTES as f64 {
        return Err(format!(
            "this architecture needs about {:.0} GiB for its weights and one input, more than the {} GiB gaze allows",
            bytes / (1u64 << 30) as f64,
            MAX_MODEL_BYTES >> 30
        ));
    }
    Ok(())
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
    /// Tensor names and element types as the file spells them (`F32`, `BF16`, `I64`, ...).
    pub dtypes: BTreeMap<String, String>,
    /// A safetensors file's `__metadata__` (empty for PyTorch files); models keep their
    /// architecture there.
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
        let mut tensors: BTreeMap<String, (Vec<usize>, String)> = reader
            .tensors()
            .iter()
            .map(|(k, t)| (k.clone(), (t.shape().to_vec(), format!("{:?}", t.dtype()))))
            .collect();
        // Training checkpoints keep the weights under `state_dict` or `model` beside other
        // entries (optimizer state, epoch); only the weights are read.
        let mut top_level_key = None;
        for key in ["state_dict", "model"] {
            let prefix = format!("{key}.");
            if tensors.keys().any(|k| k.starts_with(&prefix)) {
                tensors = tensors
                    .into_iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v)))
                    .collect();
                top_level_key = Some(key.to_string());
                break;
            }
        }
        if tensors.is_empty() {
            return Err(read_err("holds no tensors".into()));
        }
        let (shapes, dtypes) = split(tensors);
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Pytorch { top_level_key },
            shapes,
            dtypes,
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
            dtype: String,
        }
        let mut json: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| read_err(format!("bad safetensors header: {e}")))?;
        let metadata: BTreeMap<String, String> = json
            .remove("__metadata__")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| read_err(format!("bad safetensors metadata: {e}")))?
            .unwrap_or_default();
        let tensors = json
            .into_iter()
            .map(|(k, v)| serde_json::from_value::<Entry>(v).map(|e| (k, (e.shape, e.dtype))))
            .collect::<Result<_, _>>()
            .map_err(|e| read_err(format!("bad safetensors header: {e}")))?;
        let (shapes, dtypes) = split(tensors);
        Ok(Self {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            shapes,
            dtypes,
            metadata,
        })
    }

    /// Compares the tensors that fix an architecture's size (`shapes`, PyTorch shapes; those
    /// the file lacks are left to [`Checkpoint::mismatch`]) and the number of layers under
    /// each `(prefix, count)` of `layers` (`blocks.` holding `blocks.0.`, `blocks.1.`, ...)
    /// with the file, so that a wrong architecture is refused before it is allocated.
    /// `None` when they agree, else one line of what differs.
    pub fn size_mismatch(&self, shapes: &[(&str, Vec<usize>)], layers: &[(&str, usize)]) -> Option<String> {
        let wrong: Vec<String> = shapes
            .iter()
            .filter_map(|(name, want)| {
                let have = self.shapes.get(*name)?;
                (have != want).then(|| format!("{name} is {have:?}, expected {want:?}"))
            })
            .collect();
        let mut found = Vec::new();
        if !wrong.is_empty() {
            found.push(format!("{} wrongly shaped ({})", wrong.len(), wrong.join("; ")));
        }
        for (prefix, want) in layers {
            let indices: std::collections::BTreeSet<&str> = self
                .shapes
                .keys()
                .filter_map(|k| k.strip_prefix(prefix)?.split('.').next())
                .collect();
            if !indices.is_empty() && indices.len() != *want {
                found.push(format!(
                    "{} layers under {prefix}, expected {want}",
                    indices.len()
                ));
            }
        }
        (!found.is_empty()).then(|| found.join("; "))
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
        let not_float: Vec<String> = expected
            .keys()
            .filter(|k| !skip(k))
            .filter_map(|k| {
                let dtype = self.dtypes.get(k)?;
                (!FLOAT_DTYPES.contains(&dtype.as_str())).then(|| format!("{k} is {dtype}"))
            })
            .collect();
        let mut parts = Vec::new();
        if !not_float.is_empty() {
            parts.push(format!(
                "{} not floating point ({}); weights must be F32, F16, BF16 or F64",
                not_float.len(),
                not_float.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
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

/// The element types that load, converted to f32: checkpoints on the model hubs are often
/// f16 or bf16.
const FLOAT_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F64"];

type Shapes = BTreeMap<String, Vec<usize>>;

fn split(tensors: BTreeMap<String, (Vec<usize>, String)>) -> (Shapes, BTreeMap<String, String>) {
    let dtypes = tensors
        .iter()
        .map(|(k, (_, d))| (k.clone(), d.to_uppercase()))
        .collect();
    (tensors.into_iter().map(|(k, (s, _))| (k, s)).collect(), dtypes)
}

/// The adapter for weights saved by PyTorch: its layout turned into burn's, then every
/// float tensor converted to f32.
pub fn from_pytorch_as_f32() -> ChainAdapter {
    PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
}

/// Loads the tensors of the PyTorch checkpoint `store` (with its top-level key and key
/// remappings set) into `module` through [`from_pytorch_as_f32`]; `filter` picks the module
/// paths to load (all when `None`). What did not load is in the result.
pub fn apply_pytorch<M: ModuleSnapshot>(
    module: &mut M,
    mut store: PytorchStore,
    filter: Option<PathFilter>,
) -> Result<ApplyResult, String> {
    let tensors = store
        .get_all_tensors()
        .map_err(|e| e.to_string())?
        .values()
        .cloned()
        .collect();
    let adapter: Box<dyn ModuleAdapter> = Box::new(from_pytorch_as_f32());
    Ok(module.apply(tensors, filter, Some(adapter), false))
}

/// Tensor names and shapes of `model` as PyTorch/timm would list them.
pub fn state_dict_shapes<M: ModuleSnapshot>(model: &M) -> BTreeMap<String, Vec<usize>> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| (t.name, t.shape.to_vec()))
        .collect()
}

/// Stores an item's typed metadata (a model's architecture, say) as JSON under `key`, and
/// reads it back from [`Checkpoint::metadata`].
pub fn read_metadata<T: serde::de::DeserializeOwned>(
    checkpoint: &Checkpoint,
    key: &str,
) -> Result<Option<T>, LoadError> {
    checkpoint
        .metadata
        .get(key)
        .map(|json| serde_json::from_str(json))
        .transpose()
        .map_err(|e| LoadError::Read {
            path: checkpoint.path.clone(),
            message: format!("bad {key} metadata: {e}"),
        })
}

/// What a load left undone: `result`'s errors and the missing tensors that `expected` says
/// should have loaded, as one line; `None` when everything loaded.
pub fn unapplied(result: &ApplyResult, expected: impl Fn(&str) -> bool) -> Option<String> {
    let missing: Vec<&str> = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| expected(p))
        .collect();
    if result.errors.is_empty() && missing.is_empty() {
        return None;
    }
    let errors: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
    Some(
        format!("{} {}", errors.join("; "), missing.join(", "))
            .trim()
            .to_string(),
    )
}

/// Rewrites the `.safetensors` file at `path` with its header's keys in sorted order, so that
/// the same tensors and metadata give the same bytes: the stores keep the metadata in a hash
/// map, whose order changes from one save to the next. The tensor data is not touched; the
/// header is padded with spaces to a multiple of 8 bytes, as the format's writers do.
fn canonical_header(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let length = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| invalid("shorter than a safetensors header"))?;
    let data = bytes
        .get(8 + length..)
        .ok_or_else(|| invalid("header longer than the file"))?;
    // serde_json's maps are ordered by key.
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + length]).map_err(|e| invalid(&format!("bad header: {e}")))?;
    let mut text = serde_json::to_string(&header).map_err(std::io::Error::other)?;
    text.push_str(&" ".repeat(text.len().next_multiple_of(8) - text.len()));
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out)
}

/// Writes `module` as `.safetensors` in PyTorch's layout (`[out, in]` linear weights, norm
/// weights as `weight`/`bias`), under `key` in the metadata `json` (a model's architecture,
/// say), module paths respelled by the `(pattern, replacement)` `remappings`. The file
/// appears whole or not at all ([`gaze_data::write_atomic_with`]), and the same module and
/// metadata always give the same bytes.
pub fn save_safetensors<M: ModuleSnapshot>(
    module: &M,
    path: &Path,
    (key, json): (&str, String),
    remappings: impl IntoIterator<Item = (String, String)>,
) -> Result<(), LoadError> {
    gaze_data::write_atomic_with(path, |tmp| {
        let mut store = SafetensorsStore::from_file(tmp)
            .with_to_adapter(BurnToPyTorchAdapter)
            .metadata(key, json)
            // Hugging Face tools (transformers, timm's Hub loader) expect PyTorch's tag.
            .metadata("format", "pt")
            .overwrite(true);
        for (from, to) in remappings {
            store = store.with_key_remapping(&from, &to);
        }
        module.save_into(&mut store).map_err(std::io::Error::other)?;
        canonical_header(tmp)
    })
    .map_err(|e| LoadError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::Device;

    #[test]
    fn saving_twice_gives_the_same_bytes() {
        let device = Device::flex();
        let _draws = crate::device::seeded(&device, 1);
        let layer = LinearConfig::new(6, 4).init(&device);
        let dir = std::env::temp_dir().join(format!("gaze-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let save = |name: &str| {
            let path = dir.join(name);
            save_safetensors(&layer, &path, ("gaze.test", "{\"a\":1}".into()), []).unwrap();
            std::fs::read(path).unwrap()
        };
        let first = save("0.safetensors");
        for i in 1..8 {
            assert_eq!(
                save(&format!("{i}.safetensors")),
                first,
                "save {i} differs from the first"
            );
        }
        let checkpoint = Checkpoint::open(&dir.join("0.safetensors")).unwrap();
        assert_eq!(checkpoint.shapes["weight"], vec![4, 6]);
        assert_eq!(checkpoint.metadata["gaze.test"], "{\"a\":1}");
        assert_eq!(
            checkpoint.metadata["format"], "pt",
            "the tag Hugging Face tools expect"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
