//! Teacher-forced training of a CATR-architecture captioner, as CATR's `main.py` trains:
//! the decoder reads `[CLS]` and the caption, predicts the caption and `[SEP]` one position
//! later under a causal mask, and the cross-entropy ignores the padding. Runs on a
//! `gaze synth --captions` folder (`vocab.txt`, `{train,val}/captions.json` and images).
//!
//! The run folder is laid out like a ViT run (`config.toml`, `metrics.csv`, `summary.json`,
//! resumable `last/`), with the model as `model.safetensors` in the published checkpoint's
//! names and its [`CatrConfig`] in the metadata, so `gaze caption` loads it without flags.
//! The summary scores the final model by greedy decoding: exact caption match on the
//! validation scenes and, on the scenes captioned exactly, pointing accuracy (whether the
//! attention peak of each colour and shape word lies inside the object it names).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use gaze_data::scenes::{SceneRecord, read_captions};
use gaze_vit::train::{
    BatchProgress, ConfigError, EpochRow, Observer, OptimSection, RunOptions, RunSection, ScheduleSection,
    TrainError, build_optimizer, epoch_order, io_err, learning_rate, load_checkpoint, load_toml,
    save_checkpoint, write_json, write_metrics,
};
use serde::{Deserialize, Serialize};

use crate::model::{CLS, SEP};
use crate::{Caption, CatrConfig, Vocab, preprocess, save_catr};

/// `[PAD]`: fills input and target positions after a caption; ignored by the loss.
pub const PAD: usize = 0;

/// A captioner training run. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionTrainConfig {
    /// Fields of [`CatrConfig`]; the rest are the published v3 model's.
    pub model: serde_json::Map<String, serde_json::Value>,
    pub data: CaptionDataSection,
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    #[serde(default)]
    pub run: RunSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionDataSection {
    /// A `gaze synth --captions` folder.
    pub dir: PathBuf,
    pub batch_size: usize,
}

impl CaptionTrainConfig {
    /// Reads `path` and applies `section.key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        load_toml(path, overrides, Self::validate)
    }

    fn validate(&self) -> Result<(), String> {
        self.catr()?;
        if self.data.batch_size == 0 || self.schedule.epochs == 0 || self.optim.grad_accum != 1 {
            return Err(
                "data.batch_size and schedule.epochs must be at least 1; optim.grad_accum must be 1".into(),
            );
        }
        Ok(())
    }

    /// The architecture: v3 with `model`'s fields.
    pub fn catr(&self) -> Result<CatrConfig, String> {
        CatrConfig::from_partial(&serde_json::Value::Object(self.model.clone()))
            .map_err(|e| format!("[model]: {e}"))
    }
}

/// One split in memory: normalised pixels, token ids and records, in file-name order.
pub struct CaptionSet {
    pub names: Vec<String>,
    pub records: Vec<SceneRecord>,
    /// `[3, h, w]` per image.
    pub pixels: Vec<Vec<f32>>,
    /// Caption word pieces, without `[CLS]`/`[SEP]`.
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

/// Mean cross-entropy over the target positions that are not `ignore`, the number of those
/// positions whose argmax is right, and their count (`F.cross_entropy(..., ignore_index=ignore)`).
pub fn sequence_cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    ignore: usize,
) -> (Tensor<1>, usize, usize) {
    let [batch, len, vocab] = logits.dims();
    let n = batch * len;
    let logits = logits.reshape([n, vocab]);
    let targets = targets.reshape([n]);
    let keep = targets.clone().not_equal_elem(ignore as i64);
    let counted = keep.clone().int().sum().into_scalar::<i64>() as usize;
    let correct = logits
        .clone()
        .argmax(1)
        .reshape([n])
        .equal(targets.clone())
        .bool_and(keep.clone())
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let nll = log_softmax(logits, 1)
        .gather(1, targets.reshape([n, 1]))
        .reshape([n])
        .neg();
    let loss = (nll * keep.float()).sum().div_scalar(counted.max(1) as f64);
    (loss, correct, counted)
}

/// How well a captioner does on a split, by greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionScores {
    /// Share of images whose caption equals the reference, word for word.
    pub exact_match: f64,
    /// On exactly captioned images: share of colour and shape words whose attention peak (the
    /// centre of the arg-max feature cell) lies inside the box of the object the word names.
    pub pointing_accuracy: f64,
    /// The same share for a cell drawn uniformly at random (the pointing baseline).
    pub pointing_chance: f64,
    /// Colour and shape words scored.
    pub pointed_words: usize,
    pub images: usize,
}

/// Whether the centre of cell `(y, x)` of a feature grid with `stride`-pixel cells lies inside
/// `bbox` (`[x0, y0, x1, y1]`, end exclusive, in the same pixels).
pub fn cell_in_box(y: usize, x: usize, stride: usize, bbox: [f64; 4]) -> bool {
    let (cx, cy) = ((x as f64 + 0.5) * stride as f64, (y as f64 + 0.5) * stride as f64);
    cx >= bbox[0] && cx < bbox[2] && cy >= bbox[1] && cy < bbox[3]
}

/// Greedy captions of `set` and their [`CaptionScores`]. Word `3i + 1` (colour) and `3i + 2`
/// (shape) of a scene caption name object `i`; relation words sit between objects.
pub fn score_captions(
    model: &Caption,
    config: &CatrConfig,
    set: &CaptionSet,
    device: &Device,
) -> CaptionScores {
    let (h, w) = set.size;
    let stride = config.output_stride();
    let (mut exact, mut hits, mut chance, mut words) = (0usize, 0usize, 0.0f64, 0usize);
    let captioner = model.captioner();
    for i in 0..set.names.len() {
        let image = Tensor::<4>::from_data(TensorData::new(set.pixels[i].clone(), [1, 3, h, w]), device);
        let out = captioner.caption(image, config.max_position_embeddings - 1);
        if out.tokens != set.tokens[i] {
            continue;
        }
        exact += 1;
        let (gh, gw) = out.grid;
        // Scene words are whole word pieces: step k is word k.
        let objects = &set.records[i].objects;
        let mut object = 0;
        for (step, word) in set.records[i].caption.split(' ').enumerate() {
            let Some(target) = objects.get(object) else { break };
            if word != target.colour && word != target.shape {
                continue;
            }
            let bbox = target.bbox.map(|v| v as f64 * set.scale);
            let map = &out.attention[step];
            let peak = gaze_vit::infer::argmax(map);
            hits += cell_in_box(peak / gw, peak % gw, stride, bbox) as usize;
            let inside = (0..gh * gw)
                .filter(|&c| cell_in_box(c / gw, c % gw, stride, bbox))
                .count();
            chance += inside as f64 / (gh * gw) as f64;
            words += 1;
            if word == target.shape {
                object += 1;
            }
        }
    }
    let n = set.names.len().max(1) as f64;
    let per_word = |v: f64| if words == 0 { 0.0 } else { v / words as f64 };
    CaptionScores {
        exact_match: exact as f64 / n,
        pointing_accuracy: per_word(hits as f64),
        pointing_chance: per_word(chance),
        pointed_words: words,
        images: set.names.len(),
    }
}

/// Where a run is; `last/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct CaptionRunState {
    /// Epoch in progress (0-based) and its next batch.
    epoch: usize,
    batch: usize,
    step: usize,
    loss_sum: f64,
    correct: usize,
    counted: usize,
    seen: usize,
    epoch_seconds: f64,
    rows: Vec<EpochRow>,
    seconds: f64,
}

/// What a finished caption run reports (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSummary {
    pub train_images: usize,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    /// Teacher-forced token accuracy on the validation split after the last epoch.
    pub val_token_accuracy: Option<f64>,
    pub val: CaptionScores,
}

/// Training images used to freeze the batch norms' statistics for inference.
const CALIBRATION_IMAGES: usize = 256;

/// The inference model of the training model `model`: off the autodiff graph, with the batch
/// norms frozen at statistics re-estimated on the first training images (see
/// [`crate::ResNet::calibrated`]).
pub fn for_inference(model: &Caption, train: &CaptionSet, device: &Device) -> Caption {
    let mut inference = model.valid();
    let first: Vec<usize> = (0..train.names.len().min(CALIBRATION_IMAGES)).collect();
    let (images, _, _) = train.batch(&first, device);
    inference.backbone = inference.backbone.calibrated(images);
    inference
}

/// Teacher-forced loss and token accuracy of `model` on `set`.
fn evaluate(model: &Caption, set: &CaptionSet, batch_size: usize, device: &Device) -> (f64, f64) {
    let (mut loss_sum, mut correct, mut counted) = (0.0, 0, 0);
    let indices: Vec<usize> = (0..set.names.len()).collect();
    for chunk in indices.chunks(batch_size) {
        let (images, inputs, targets) = set.batch(chunk, device);
        let (logits, _) = model.forward(images, inputs);
        let (loss, right, n) = sequence_cross_entropy(logits, targets, PAD);
        loss_sum += loss.into_scalar::<f32>() as f64 * n as f64;
        correct += right;
        counted += n;
    }
    (
        loss_sum / counted.max(1) as f64,
        correct as f64 / counted.max(1) as f64,
    )
}

/// Trains as `config` says, writing the run folder `out`. Of `options`, `resume` continues
/// from `out/last/` and `max_steps` stops early with a checkpoint (as a kill would); every
/// image must be readable. Returns `None` when stopped early.
pub fn train_captioner(
    config: &CaptionTrainConfig,
    out: &Path,
    options: &RunOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<Option<CaptionSummary>, TrainError> {
    if options.skip_bad {
        return Err(io_err(
            &config.data.dir,
            "skipping unreadable images is not supported for captions",
        ));
    }
    let catr = config.catr().map_err(|message| ConfigError {
        path: out.join("config.toml"),
        message,
    })?;
    let vocab_path = config.data.dir.join("vocab.txt");
    let vocab = Vocab::from_file(&vocab_path).map_err(|e| io_err(&vocab_path, e.message))?;
    if vocab.len() != catr.vocab_size {
        return Err(io_err(
            &vocab_path,
            format!(
                "{} tokens, but model.vocab_size = {}; set model.vocab_size to the vocabulary's length",
                vocab.len(),
                catr.vocab_size
            ),
        ));
    }
    let started = Instant::now();
    let train = load_split(&config.data.dir.join("train"), &vocab, &catr)?;
    let val = load_split(&config.data.dir.join("val"), &vocab, &catr)?;
    observer.message(&format!(
        "loaded {} training and {} validation scenes in {:.1} s",
        train.names.len(),
        val.names.len(),
        started.elapsed().as_secs_f64()
    ));
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let toml = toml::to_string(config).map_err(|e| io_err(&out.join("config.toml"), e))?;
    gaze_data::write_atomic(&out.join("config.toml"), toml.as_bytes())
        .map_err(|e| io_err(&out.join("config.toml"), e))?;

    let train_device = device.clone().autodiff();
    train_device.seed(config.run.seed);
    let mut model = catr.init(&train_device);
    model.backbone = model.backbone.for_training();
    let mut optim = build_optimizer(&config.optim);
    let mut state = CaptionRunState::default();
    if options.resume {
        match load_checkpoint::<_, CaptionRunState>(out, model.clone(), optim)? {
            Some((m, o, s)) => {
                observer.message(&format!("resuming at epoch {}, batch {}", s.epoch + 1, s.batch));
                (model, optim, state) = (m, o, s);
            }
            None => {
                observer.message("no checkpoint to resume from; starting fresh");
                optim = build_optimizer(&config.optim);
            }
        }
    }
    let batch_size = config.data.batch_size;
    let batches = train.names.len().div_ceil(batch_size);
    let total_steps = batches * config.schedule.epochs;
    let mut steps_this_run = 0;
    // The inference model of the last epoch trained in this call, for the final scores.
    let mut last_inference = None;
    while state.epoch < config.schedule.epochs {
        let epoch = state.epoch;
        let order = epoch_order(train.names.len(), config.run.seed, epoch);
        let mut lr = learning_rate(&config.schedule, config.optim.lr, state.step, total_steps);
        for b in state.batch..batches {
            let batch_started = Instant::now();
            let indices = &order[b * batch_size..((b + 1) * batch_size).min(order.len())];
            let (images, inputs, targets) = train.batch(indices, &train_device);
            let (logits, _) = model.forward(images, inputs);
            let (loss, correct, counted) = sequence_cross_entropy(logits, targets, PAD);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = learning_rate(&config.schedule, config.optim.lr, state.step, total_steps);
            model = optim.step(lr, model, grads);
            state.step += 1;
            steps_this_run += 1;
            state.batch = b + 1;
            state.loss_sum += loss_value * counted as f64;
            state.correct += correct;
            state.counted += counted;
            state.seen += indices.len();
            state.epoch_seconds += batch_started.elapsed().as_secs_f64();
            let per_token = |v: f64| v / state.counted.max(1) as f64;
            observer.batch(&BatchProgress {
                epoch,
                batch: b,
                batches,
                loss: per_token(state.loss_sum),
                accuracy: per_token(state.correct as f64),
                lr,
                images_per_s: state.seen as f64 / state.epoch_seconds.max(1e-9),
            });
            let every = config.run.checkpoint_every;
            if b + 1 < batches && every > 0 && state.step.is_multiple_of(every) {
                save_checkpoint(out, &model, &optim, &state)?;
            }
            if b + 1 < batches && options.max_steps.is_some_and(|m| steps_this_run >= m) {
                save_checkpoint(out, &model, &optim, &state)?;
                observer.message(&format!(
                    "stopped after {steps_this_run} steps (checkpoint written)"
                ));
                return Ok(None);
            }
        }
        state.seconds += state.epoch_seconds;
        let last_epoch = epoch + 1 == config.schedule.epochs;
        let inference = for_inference(&model, &train, device);
        let (val_loss, val_acc) = if (epoch + 1).is_multiple_of(config.run.eval_every.max(1)) || last_epoch {
            let (l, a) = evaluate(&inference, &val, batch_size, device);
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let per_token = |v: f64| v / state.counted.max(1) as f64;
        let row = EpochRow {
            epoch: epoch + 1,
            step: state.step,
            lr,
            train_loss: per_token(state.loss_sum),
            train_acc: per_token(state.correct as f64),
            val_loss,
            val_acc,
            images_per_s: state.seen as f64 / state.epoch_seconds.max(1e-9),
            seconds: state.seconds,
        };
        observer.epoch(&row);
        let mut rows = std::mem::take(&mut state.rows);
        rows.push(row);
        state = CaptionRunState {
            epoch: epoch + 1,
            step: state.step,
            rows,
            seconds: state.seconds,
            ..CaptionRunState::default()
        };
        save_catr(&inference, &catr, &out.join("model.safetensors"))
            .map_err(|e| io_err(&out.join("model.safetensors"), e))?;
        save_checkpoint(out, &model, &optim, &state)?;
        write_metrics(out, &state.rows)?;
        last_inference = Some(inference);
    }
    observer.message("scoring greedy captions on the validation scenes");
    // Resuming a finished run trains nothing: its model is rebuilt from the checkpoint.
    let inference = last_inference.unwrap_or_else(|| for_inference(&model, &train, device));
    let scores = score_captions(&inference, &catr, &val, device);
    let summary = CaptionSummary {
        train_images: train.names.len(),
        epochs: config.schedule.epochs,
        steps: state.step,
        seconds: state.seconds,
        val_token_accuracy: state.rows.last().and_then(|r| r.val_acc),
        val: scores,
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(Some(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_ignored_by_the_loss() {
        let device = Device::flex();
        // Two positions: the first has target 1, the second is padding.
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 2.0, 0.0, 5.0, 0.0, 0.0], [1, 2, 3]),
            &device,
        );
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 0], [1, 2]), &device);
        let (loss, correct, counted) = sequence_cross_entropy(logits, targets, PAD);
        let want = (1.0f64 + 2f64.exp() + 1.0).ln() - 2.0;
        assert!((loss.into_scalar::<f32>() as f64 - want).abs() < 1e-6);
        assert_eq!((correct, counted), (1, 1));
    }

    #[test]
    fn shipped_configs_parse_and_typos_are_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/caption");
        let path = dir.join("synth_catr.toml");
        let config = CaptionTrainConfig::load(&path, &[]).unwrap();
        let catr = config.catr().unwrap();
        assert_eq!((catr.vocab_size, catr.max_dim), (115, 96));
        assert_eq!(catr.vocab_size, gaze_data::scenes::scene_vocab().len());
        let typo = CaptionTrainConfig::load(&path, &["model.hiden_dim=8".into()]).unwrap_err();
        assert!(typo.to_string().contains("hiden_dim"), "{typo}");
        let bad = CaptionTrainConfig::load(&path, &["optim.grad_accum=2".into()]).unwrap_err();
        assert!(bad.to_string().contains("grad_accum"), "{bad}");
    }

    #[test]
    fn cell_centres_decide_pointing() {
        // Cell (1, 2) of a 16-pixel grid has its centre at (40, 24).
        assert!(cell_in_box(1, 2, 16, [30.0, 20.0, 50.0, 30.0]));
        assert!(!cell_in_box(1, 2, 16, [41.0, 20.0, 50.0, 30.0]));
        assert!(!cell_in_box(1, 2, 16, [30.0, 10.0, 50.0, 24.0]));
    }
}
