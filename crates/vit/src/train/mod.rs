//! Fine-tuning and training from scratch: the course recipe (SGD with momentum, warm-up,
//! pretrained init) and its ablations, config-driven and resumable through
//! [`gaze_train::fit`].
//!
//! Besides `last/`, `metrics.csv` and `config.toml`, a run folder holds `best.safetensors`
//! (the best validation epoch, timm key names), timm's `config.json` beside it (so the folder
//! loads like a Hub checkpoint) and `summary.json`. The data order and the
//! augmentation are functions of `(seed, epoch, image)`, so a resumed run equals an
//! uninterrupted one.

mod config;
mod data;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use gaze_data::augment::TrainTransform;
use gaze_data::{DataError, EvalTransform, LabeledImage};
use gaze_train::{
    ConfigError, FitConfig, Observer, RunFolder, RunOptions, Summary, Tally, Task, TrainError, fit, io_err,
    write_json,
};

pub use config::*;
pub use data::{ScanReport, check_labels, scan_images};

use crate::{HeadInit, VisionTransformer, VitConfig, load_vit_from, save_vit};
use gaze_nn::checkpoint::Checkpoint;

/// Mean cross-entropy over the batch with label smoothing `smoothing` (PyTorch's
/// `F.cross_entropy(..., label_smoothing=smoothing)`), and the number of correct argmaxes.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, smoothing: f64) -> (Tensor<1>, usize) {
    let [batch, _] = logits.dims();
    let correct = logits
        .clone()
        .argmax(1)
        .reshape([batch])
        .equal(labels.clone())
        .int()
        .sum()
        .into_scalar::<i64>() as usize;
    let log_probs = log_softmax(logits, 1); // [batch, classes]
    let nll = log_probs
        .clone()
        .gather(1, labels.reshape([batch, 1]))
        .reshape([batch])
        .neg();
    let loss = if smoothing > 0.0 {
        let uniform = log_probs.mean_dim(1).reshape([batch]).neg();
        nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
    } else {
        nll
    };
    (loss.mean(), correct)
}

fn initial_model(
    config: &TrainConfig,
    vit: &VitConfig,
    start: Option<(Checkpoint, Option<VitConfig>)>,
    device: &Device,
) -> Result<VisionTransformer, TrainError> {
    let _draws = gaze_nn::device::seeded(device, config.run.seed);
    let Some((checkpoint, stored)) = start else {
        return Ok(vit.init(device));
    };
    let source = stored.unwrap_or_else(|| {
        VitConfig::preset(&config.model.preset)
            .expect("validated preset")
            .with_num_classes(vit.num_classes)
    });
    let head = HeadInit::Fresh {
        num_classes: vit.num_classes,
    };
    let (model, loaded) = load_vit_from(&checkpoint, &source, head, device)?;
    Ok(if loaded.img_size != vit.img_size {
        model.set_input_size(&loaded, vit.img_size).0
    } else {
        model
    })
}

/// The checkpoint a pretrained run starts from, its header read once, with the architecture
/// and class names in its metadata if it has them.
fn starting_checkpoint(config: &TrainConfig) -> Result<Option<(Checkpoint, Option<VitConfig>)>, TrainError> {
    let (Init::Pretrained, Some(weights)) = (&config.model.init, &config.model.weights) else {
        return Ok(None);
    };
    let checkpoint = Checkpoint::open(weights)?;
    let stored = crate::stored_vit_config(&checkpoint)?;
    Ok(Some((checkpoint, stored)))
}

/// The class names the starting checkpoint carries, when they fit `num_classes`: training
/// on from such a checkpoint keeps its label order, whatever the folders' order.
fn class_names(stored: Option<&VitConfig>, num_classes: usize) -> Option<Vec<String>> {
    stored
        .and_then(|c| c.label_names.clone())
        .filter(|n| n.len() == num_classes)
}

/// Loss and accuracy of `model` on `images`.
fn evaluate(
    model: &VisionTransformer,
    images: &[LabeledImage],
    transform: &EvalTransform,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64), TrainError> {
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    for chunk in images.chunks(batch_size) {
        let paths: Vec<PathBuf> = chunk.iter().map(|i| i.path.clone()).collect();
        let batch = crate::infer::load_batch(&paths, transform, device)?;
        let labels: Vec<i64> = chunk.iter().map(|i| i.label as i64).collect();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), device);
        let (loss, right) = cross_entropy(model.forward(batch), labels, 0.0);
        loss_sum += loss.into_scalar::<f32>() as f64 * chunk.len() as f64;
        correct += right;
    }
    let n = images.len().max(1) as f64;
    Ok((loss_sum / n, correct as f64 / n))
}

/// Classification as a [`Task`]: augmented batches decoded ahead on a pool of threads,
/// cross-entropy, validation on the eval transform, `best.safetensors`.
struct Classification<'a> {
    config: &'a TrainConfig,
    vit: VitConfig,
    out: &'a Path,
    train: Vec<LabeledImage>,
    val: Vec<LabeledImage>,
    skipped: usize,
    eval_transform: EvalTransform,
    train_transform: TrainTransform,
    device: Device,
    train_device: Device,
}

/// A batch's normalised pixels `[n, 3, size, size]` and labels.
type PixelsAndLabels = (Vec<f32>, Vec<i64>);

/// Batches decoded on a background thread, two ahead of the training loop.
struct Prefetch {
    batches: Option<Receiver<Result<PixelsAndLabels, DataError>>>,
    loader: Option<JoinHandle<()>>,
}

impl Iterator for Prefetch {
    type Item = Result<PixelsAndLabels, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.batches.as_ref()?.recv().ok()?.map_err(TrainError::from))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // The loader stops at its next send once the receiver is gone.
        drop(self.batches.take());
        if let Some(loader) = self.loader.take() {
            let _ = loader.join();
        }
    }
}

impl Task for Classification<'_> {
    type Model = VisionTransformer;
    type Batch = PixelsAndLabels;

    fn examples(&self) -> usize {
        self.train.len()
    }

    fn batches(
        &self,
        epoch: usize,
        batches: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch, TrainError>> + '_> {
        let (tx, rx) = sync_channel(2);
        let images = self.train.clone();
        let transform = self.train_transform.clone();
        let seed = self.config.run.seed;
        let pool = data::worker_pool(self.config.data.workers);
        let loader = std::thread::spawn(move || {
            for indices in batches {
                let batch = pool.install(|| data::train_batch(&images, &indices, &transform, seed, epoch));
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        Box::new(Prefetch {
            batches: Some(rx),
            loader: Some(loader),
        })
    }

    fn loss(&self, model: &VisionTransformer, (pixels, labels): PixelsAndLabels) -> (Tensor<1>, Tally) {
        let n = labels.len();
        let size = self.eval_transform.size as usize;
        let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), &self.train_device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &self.train_device);
        let (loss, correct) = cross_entropy(model.forward(images), labels, self.config.optim.label_smoothing);
        let tally = Tally {
            correct,
            counted: n,
            examples: n,
        };
        (loss, tally)
    }

    fn validate(
        &mut self,
        model: &VisionTransformer,
        evaluate_now: bool,
    ) -> Result<Option<(f64, f64)>, TrainError> {
        if !evaluate_now {
            return Ok(None);
        }
        let batch_size = self.config.data.batch_size;
        evaluate(
            &model.valid(),
            &self.val,
            &self.eval_transform,
            batch_size,
            &self.device,
        )
        .map(Some)
    }

    fn save_epoch(&mut self, model: &VisionTransformer, improved: bool) -> Result<(), TrainError> {
        if improved {
            save_vit(&model.valid(), &self.vit, &self.out.join("best.safetensors"))?;
        }
        Ok(())
    }

    fn skipped_examples(&self) -> usize {
        self.skipped
    }
}

/// Trains as `config` says, writing the run folder `out`.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    options: &RunOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<Summary, TrainError> {
    let vit = config.vit_config().map_err(|message| ConfigError {
        path: out.join("config.toml"),
        message,
    })?;
    let _folder = RunFolder::open(out, options.resume)?;
    let scan_started = Instant::now();
    let start = starting_checkpoint(config)?;
    let names = class_names(
        start.as_ref().and_then(|(_, stored)| stored.as_ref()),
        vit.num_classes,
    );
    let train_scan = scan_images(&config.data.train, "trainval", names.as_deref(), options.skip_bad)?;
    let names = names.or_else(|| train_scan.classes.clone());
    let val_scan = scan_images(&config.data.val, "test", names.as_deref(), options.skip_bad)?;
    if let Some(names) = names.as_ref().filter(|n| n.len() != vit.num_classes) {
        return Err(ConfigError {
            path: config.data.train.clone(),
            message: format!(
                "the training set has {} classes but model.num_classes is {}; set model.num_classes={}",
                names.len(),
                vit.num_classes,
                names.len()
            ),
        }
        .into());
    }
    check_labels(&train_scan, vit.num_classes)?;
    check_labels(&val_scan, vit.num_classes)?;
    let vit = vit.with_label_names(names);
    let layouts = match (train_scan.layout, val_scan.layout) {
        (t, v) if t == v => t.describe().to_string(),
        (t, v) => format!("training: {}; validation: {}", t.describe(), v.describe()),
    };
    observer.message(&format!(
        "scanned {} training and {} validation images of {} classes ({layouts}) in {:.1} s",
        train_scan.images.len(),
        val_scan.images.len(),
        vit.num_classes,
        scan_started.elapsed().as_secs_f64()
    ));
    let precision = config.run.precision;
    let notice = precision.prepare(device).map_err(|message| ConfigError {
        path: out.join("config.toml"),
        message,
    })?;
    if let Some(notice) = notice {
        observer.message(&notice);
    }
    let train_device = device.clone().autodiff();
    let model = initial_model(config, &vit, start, &train_device)?.with_precision(precision);
    gaze_data::write_atomic(&out.join("config.toml"), config.to_toml().as_bytes())
        .map_err(|e| io_err(&out.join("config.toml"), e))?;
    let hub_config = crate::hub_config_json(&vit, &config.model.preset).map_err(|message| ConfigError {
        path: out.join("config.toml"),
        message,
    })?;
    gaze_data::write_atomic(&out.join("config.json"), hub_config.as_bytes())
        .map_err(|e| io_err(&out.join("config.json"), e))?;
    let eval_transform = vit.eval_transform();
    let mut task = Classification {
        config,
        train_transform: data::train_transform(config, &eval_transform),
        eval_transform,
        vit,
        out,
        train: train_scan.images,
        val: val_scan.images,
        skipped: train_scan.skipped + val_scan.skipped,
        device: device.clone(),
        train_device,
    };
    let fit_config = FitConfig {
        optim: &config.optim,
        schedule: &config.schedule,
        run: &config.run,
        batch_size: config.data.batch_size,
    };
    let fitted = fit(&mut task, model, fit_config, out, options, observer)?;
    if fitted.finished {
        write_json(&out.join("summary.json"), &fitted.summary)?;
    }
    Ok(fitted.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_known_answer() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, 0.0, 0.0, 1.0, 3.0], [2, 3]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
        let (loss, correct) = cross_entropy(logits.clone(), labels.clone(), 0.0);
        let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let want = ((lse([2.0, 0.0, 0.0]) - 2.0) + (lse([0.0, 1.0, 3.0]) - 1.0)) / 2.0;
        assert!((loss.into_scalar::<f32>() as f64 - want).abs() < 1e-6);
        assert_eq!(correct, 1);
        let (smoothed, _) = cross_entropy(logits, labels, 0.1);
        let uniform = ((lse([2.0, 0.0, 0.0]) - 2.0 / 3.0) + (lse([0.0, 1.0, 3.0]) - 4.0 / 3.0)) / 2.0;
        assert!((smoothed.into_scalar::<f32>() as f64 - (0.9 * want + 0.1 * uniform)).abs() < 1e-6);
    }
}
