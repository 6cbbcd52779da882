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

mod config;
mod dataset;
mod scoring;

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use gaze_records::CaptionSummary;
use gaze_train::{
    ConfigError, FitConfig, Observer, RunFolder, RunOptions, Tally, Task, TrainError, fit, io_err, write_json,
};

pub use config::{CaptionDataSection, CaptionTrainConfig};
pub use dataset::{CaptionSet, load_split};
pub use scoring::score_captions;

use crate::{Catr, Vocab, save_catr};

/// `[PAD]`: fills input and target positions after a caption; ignored by the loss.
pub const PAD: usize = 0;

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

/// Training images used to freeze the batch norms' statistics for inference.
const CALIBRATION_IMAGES: usize = 256;

/// The inference model of the training model `model`: off the autodiff graph, with the batch
/// norms frozen at statistics re-estimated on the first training images (see
/// [`crate::ResNet::calibrated`]).
pub fn for_inference(model: &Catr, train: &CaptionSet, device: &Device) -> Catr {
    let mut inference = model.valid();
    let first: Vec<usize> = (0..train.names.len().min(CALIBRATION_IMAGES)).collect();
    let (images, _, _) = train.batch(&first, device);
    inference.backbone = inference.backbone.calibrated(images);
    inference
}

/// Teacher-forced loss and token accuracy of `model` on `set`.
fn evaluate(model: &Catr, set: &CaptionSet, batch_size: usize, device: &Device) -> (f64, f64) {
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

/// Teacher-forced captioning as a [`Task`]: batches from the split in memory, the
/// cross-entropy over caption tokens, and per epoch the inference model (batch norms frozen
/// at re-estimated statistics), its validation, and `model.safetensors`.
struct Captioning<'a> {
    config: &'a CaptionTrainConfig,
    catr: crate::CatrConfig,
    out: &'a Path,
    train: CaptionSet,
    val: CaptionSet,
    device: Device,
    train_device: Device,
    /// The inference model of the last epoch trained in this call, for the final scores.
    inference: Option<Catr>,
}

impl Task for Captioning<'_> {
    type Model = Catr;
    type Batch = (Tensor<4>, Tensor<2, Int>, Tensor<2, Int>);

    fn examples(&self) -> usize {
        self.train.names.len()
    }

    fn batches(
        &self,
        _epoch: usize,
        batches: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch, TrainError>> + '_> {
        Box::new(
            batches
                .into_iter()
                .map(|indices| Ok(self.train.batch(&indices, &self.train_device))),
        )
    }

    fn loss(&self, model: &Catr, (images, inputs, targets): Self::Batch) -> (Tensor<1>, Tally) {
        let examples = images.dims()[0];
        let (logits, _) = model.forward(images, inputs);
        let (loss, correct, counted) = sequence_cross_entropy(logits, targets, PAD);
        let tally = Tally {
            correct,
            counted,
            examples,
        };
        (loss, tally)
    }

    fn validate(&mut self, model: &Catr, evaluate_now: bool) -> Result<Option<(f64, f64)>, TrainError> {
        let inference = for_inference(model, &self.train, &self.device);
        let validation =
            evaluate_now.then(|| evaluate(&inference, &self.val, self.config.data.batch_size, &self.device));
        self.inference = Some(inference);
        Ok(validation)
    }

    fn save_epoch(&mut self, _model: &Catr, _improved: bool) -> Result<(), TrainError> {
        let path = self.out.join("model.safetensors");
        let inference = self.inference.as_ref().expect("validate runs first");
        save_catr(inference, &self.catr, &path).map_err(|e| io_err(&path, e))
    }
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
    let _folder = RunFolder::open(out, options.resume)?;
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
    let toml = toml::to_string(config).map_err(|e| io_err(&out.join("config.toml"), e))?;
    gaze_data::write_atomic(&out.join("config.toml"), toml.as_bytes())
        .map_err(|e| io_err(&out.join("config.toml"), e))?;

    let train_device = device.clone().autodiff();
    let draws = gaze_nn::device::seeded(&train_device, config.run.seed);
    let mut model = catr.init(&train_device);
    drop(draws);
    model.backbone = model.backbone.for_training();
    let mut task = Captioning {
        config,
        catr,
        out,
        train,
        val,
        device: device.clone(),
        train_device,
        inference: None,
    };
    let fit_config = FitConfig {
        optim: &config.optim,
        schedule: &config.schedule,
        run: &config.run,
        batch_size: config.data.batch_size,
    };
    let fitted = fit(&mut task, model, fit_config, out, options, observer)?;
    if !fitted.finished {
        return Ok(None);
    }
    observer.message("scoring greedy captions on the validation scenes");
    // Resuming a finished run trains nothing: its model is rebuilt from the checkpoint.
    let inference = match task.inference.take() {
        Some(inference) => inference,
        None => for_inference(&fitted.model, &task.train, device),
    };
    let scores = score_captions(&inference, &task.catr, &task.val, device);
    let summary = CaptionSummary {
        train_images: task.train.names.len(),
        epochs: config.schedule.epochs,
        steps: fitted.summary.steps,
        seconds: fitted.summary.seconds,
        val_token_accuracy: fitted.rows.last().and_then(|r| r.val_acc),
        val: scores,
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(Some(summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

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
}
