//! A `gaze synth --captions` split in memory, and its teacher-forcing batches.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use gaze_data::scenes::{SceneRecord, read_captions};
use gaze_train::{TrainError, io_err};

use super::PAD;
use crate::model::{CLS, SEP};
use crate::{CatrConfig, Vocab, preprocess};

/// One split in memory: normalised pixels, token ids and records, in file-name order.
pub struct CaptionSet {
    pub names: Vec<String>,
    pub records: Vec<SceneRecord>,
    /// `[3, h, w]` per image.
    pub pixels: Vec<Vec<f32>>,
    /// Catr word pieces, without `[CLS]`/`[SEP]`.
    pub tokens: Vec<Vec<usize>>,
    /// `(h, w)` of every (preprocessed) image.
    pub size: (usize, usize),
    /// Preprocessed pixels per original pixel (boxes are in original pixels).
    pub scale: f64,
}

/// Reads `split_dir` (`captions.json` and its images) for `config`, checking that every
/// image has one size and every caption fits the vocabulary and the position table.
pub fn load_split(split_dir: &Path, vocab: &Vocab, config: &CatrConfig) -> Result<CaptionSet, TrainError> {
    let records = read_captions(split_dir)?;
    let bad = |path: &Path, message: String| io_err(path, message);
    let mut set = CaptionSet {
        names: Vec::new(),
        records: Vec::new(),
        pixels: Vec::new(),
        tokens: Vec::new(),
        size: (0, 0),
        scale: 1.0,
    };
    for (name, record) in records {
        let path = split_dir.join(&name);
        let image = gaze_data::load_rgb(&path)?;
        let (resized, pixels) = preprocess(&image, config.max_dim);
        let size = (resized.height() as usize, resized.width() as usize);
        if set.names.is_empty() {
            set.size = size;
            set.scale = resized.width() as f64 / image.width() as f64;
        } else if size != set.size {
            return Err(bad(
                &path,
                format!(
                    "is {}x{} after preprocessing, the first image {}x{}; every image of a split must have one size",
                    size.1, size.0, set.size.1, set.size.0
                ),
            ));
        }
        let tokens = vocab.encode(&record.caption);
        if tokens.contains(&crate::UNK) {
            return Err(bad(
                &split_dir.join("captions.json"),
                format!(
                    "caption of {name} has words outside vocab.txt: \"{}\"",
                    record.caption
                ),
            ));
        }
        if tokens.len() + 2 > config.max_position_embeddings {
            return Err(bad(
                &split_dir.join("captions.json"),
                format!(
                    "caption of {name} has {} word pieces; model.max_position_embeddings = {} fits {}",
                    tokens.len(),
                    config.max_position_embeddings,
                    config.max_position_embeddings - 2
                ),
            ));
        }
        set.names.push(name);
        set.records.push(record);
        set.pixels.push(pixels);
        set.tokens.push(tokens);
    }
    if set.names.is_empty() {
        return Err(bad(&split_dir.join("captions.json"), "lists no images".into()));
    }
    Ok(set)
}

impl CaptionSet {
    /// Images `[n, 3, h, w]`, inputs `[CLS] caption [PAD]...` and targets
    /// `caption [SEP] [PAD]...`, both `[n, len]` with `len` the longest caption plus one.
    pub fn batch(&self, indices: &[usize], device: &Device) -> (Tensor<4>, Tensor<2, Int>, Tensor<2, Int>) {
        let (h, w) = self.size;
        let len = indices
            .iter()
            .map(|&i| self.tokens[i].len() + 1)
            .max()
            .unwrap_or(1);
        let mut pixels = Vec::with_capacity(indices.len() * 3 * h * w);
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i]);
            let caption = self.tokens[i].iter().map(|&t| t as i64);
            let mut input: Vec<i64> = std::iter::once(CLS as i64).chain(caption.clone()).collect();
            let mut target: Vec<i64> = caption.chain(std::iter::once(SEP as i64)).collect();
            input.resize(len, PAD as i64);
            target.resize(len, PAD as i64);
            inputs.extend(input);
            targets.extend(target);
        }
        let n = indices.len();
        (
            Tensor::from_data(TensorData::new(pixels, [n, 3, h, w]), device),
            Tensor::from_data(TensorData::new(inputs, [n, len]), device),
            Tensor::from_data(TensorData::new(targets, [n, len]), device),
        )
    }
}
