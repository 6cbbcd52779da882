//! Fine-tuning and training from scratch: the course recipe (SGD with momentum, warm-up,
//! pretrained init) and its ablations, config-driven and resumable.
//!
//! A run folder holds `config.toml` (the resolved config), `metrics.csv` (one row per epoch),
//! `best.safetensors` (timm key names), `summary.json`, and `last/`, the resumable checkpoint
//! (weights and optimizer state as burnpack files, which keep parameter identities, and
//! `state.json` with the position in the data, the metrics so far and the running sums).
//! `last/` is replaced atomically, so a run killed at any moment resumes from the last one
//! written; with the same seed the result is the same as an uninterrupted run, because data
//! order and augmentation are functions of `(seed, epoch, image)`.

mod config;
mod data;
mod sgd;

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use config::*;
pub use data::{ScanReport, epoch_order, scan_images};
pub use sgd::Sgd;

use crate::{HeadInit, VisionTransformer, VitConfig, load_vit, save_vit};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] gaze_data::DataError),
    #[error(transparent)]
    Load(#[from] crate::LoadError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// An I/O failure on `path`.
pub fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Learning rate of optimizer step `step` (0-based) out of `total`: linear warm-up
/// `lr * (step + 1) / warmup`, then cosine from `lr` to `min_lr` at the last step, or constant.
pub fn learning_rate(schedule: &ScheduleSection, lr: f64, step: usize, total: usize) -> f64 {
    let warmup = schedule.warmup_steps;
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    match schedule.decay {
        Decay::Constant => lr,
        Decay::Cosine => {
            let span = total.saturating_sub(warmup).saturating_sub(1).max(1) as f64;
            let t = ((step - warmup) as f64 / span).min(1.0);
            schedule.min_lr + 0.5 * (lr - schedule.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
        }
    }
}

/// The optimizer of `optim`, with PyTorch's semantics: gaze's [`Sgd`] (dampening 0), burn's
/// AdamW.
pub fn build_optimizer(optim: &OptimSection) -> ModuleOptimizer {
    let clipping = optim
        .clip_grad_norm
        .map(|n| GradientClippingConfig::Norm(n as f32));
    match optim.name {
        OptimizerKind::Sgd => {
            let sgd = ModuleOptimizer::from(Sgd {
                momentum: optim.momentum,
                weight_decay: optim.weight_decay,
                nesterov: optim.nesterov,
            });
            match clipping {
                Some(clipping) => sgd.with_grad_clipping(clipping.init()),
                None => sgd,
            }
        }
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_beta_1(optim.betas[0] as f32)
            .with_beta_2(optim.betas[1] as f32)
            .with_epsilon(optim.eps as f32)
            .with_weight_decay(optim.weight_decay as f32)
            .with_grad_clipping(clipping)
            .init(),
    }
}

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

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: usize,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub images_per_s: f64,
    /// Training seconds so far (across resumes).
    pub seconds: f64,
}

/// Running sums of the epoch in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Running {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    seconds: f64,
}

/// Where a run is; saved in `last/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RunState {
    /// Epoch in progress (0-based).
    epoch: usize,
    /// Next micro-batch of that epoch.
    batch: usize,
    /// Optimizer steps taken.
    step: usize,
    running: Running,
    rows: Vec<EpochRow>,
    best_val_acc: Option<f64>,
    best_epoch: Option<usize>,
    seconds: f64,
    skipped_images: usize,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub best_val_accuracy: Option<f64>,
    pub best_epoch: Option<usize>,
    pub final_val_accuracy: Option<f64>,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub skipped_images: usize,
}

/// Where an epoch stands after a micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchProgress {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Micro-batch index within the epoch, 0-based.
    pub batch: usize,
    /// Micro-batches in the epoch.
    pub batches: usize,
    /// The epoch's running mean loss.
    pub loss: f64,
    /// The epoch's running accuracy, in [0, 1].
    pub accuracy: f64,
    /// The learning rate of the current step.
    pub lr: f64,
    /// Training images per second over the epoch so far.
    pub images_per_s: f64,
}

/// Progress as it happens, for bars and logs.
pub trait Observer {
    /// After each micro-batch.
    fn batch(&mut self, _progress: &BatchProgress) {}
    fn epoch(&mut self, _row: &EpochRow) {}
    fn message(&mut self, _text: &str) {}
}

/// Prints nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// How to run beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from `out/last/` if it exists.
    pub resume: bool,
    /// Leave unreadable images out (counted in the summary) instead of failing at start-up.
    pub skip_bad: bool,
    /// Stop after this many optimizer steps in this invocation, leaving a checkpoint, as a
    /// kill would (used to test resuming).
    pub max_steps: Option<usize>,
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io_err(path, e))?;
    gaze_data::write_atomic(path, &bytes).map_err(|e| io_err(path, e))
}

/// Writes `out/metrics.csv`, one row per epoch.
pub fn write_metrics(out: &Path, rows: &[EpochRow]) -> Result<(), TrainError> {
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let mut csv = String::from("epoch,step,lr,train_loss,train_acc,val_loss,val_acc,images_per_s,seconds\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.6e},{:.6},{:.6},{},{},{:.3},{:.1}\n",
            r.epoch,
            r.step,
            r.lr,
            r.train_loss,
            r.train_acc,
            fmt(r.val_loss),
            fmt(r.val_acc),
            r.images_per_s,
            r.seconds
        ));
    }
    let path = out.join("metrics.csv");
    gaze_data::write_atomic(&path, csv.as_bytes()).map_err(|e| io_err(&path, e))
}

/// Writes the resumable checkpoint `out/last/` (model and optimizer as burnpack files, which
/// keep parameter identities, and `state`) atomically: a complete new folder is swapped in by
/// renames.
pub fn save_checkpoint<M: Module>(
    out: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &impl Serialize,
) -> Result<(), TrainError> {
    let tmp = out.join("last.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let model_path = tmp.join("model.bpk");
    model
        .save_into(&mut BurnpackStore::from_file(&model_path).overwrite(true))
        .map_err(|e| io_err(&model_path, e))?;
    let optim_path = tmp.join("optim.bpk");
    optim.save(&optim_path).map_err(|e| io_err(&optim_path, e))?;
    write_json(&tmp.join("state.json"), state)?;
    let (last, old) = (out.join("last"), out.join("last.old"));
    let _ = std::fs::remove_dir_all(&old);
    if last.exists() {
        std::fs::rename(&last, &old).map_err(|e| io_err(&last, e))?;
    }
    std::fs::rename(&tmp, &last).map_err(|e| io_err(&last, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Reads what [`save_checkpoint`] wrote into `model` and `optim`, or `None` if `out` has no
/// checkpoint.
pub fn load_checkpoint<M: Module, S: serde::de::DeserializeOwned>(
    out: &Path,
    mut model: M,
    optim: ModuleOptimizer,
) -> Result<Option<(M, ModuleOptimizer, S)>, TrainError> {
    // A kill between the two renames of save_checkpoint leaves only last.old.
    let dir = [out.join("last"), out.join("last.old")]
        .into_iter()
        .find(|d| d.join("state.json").exists());
    let Some(dir) = dir else { return Ok(None) };
    let state_path = dir.join("state.json");
    let text = std::fs::read(&state_path).map_err(|e| io_err(&state_path, e))?;
    let state: S = serde_json::from_slice(&text).map_err(|e| io_err(&state_path, e))?;
    let model_path = dir.join("model.bpk");
    let result = model
        .load_from(&mut BurnpackStore::from_file(&model_path))
        .map_err(|e| io_err(&model_path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(io_err(
            &model_path,
            "checkpoint does not match the configured model; start a new run folder",
        ));
    }
    let optim_path = dir.join("optim.bpk");
    let optim = optim.load(&optim_path).map_err(|e| io_err(&optim_path, e))?;
    Ok(Some((model, optim, state)))
}

fn initial_model(
    config: &TrainConfig,
    vit: &VitConfig,
    device: &Device,
) -> Result<VisionTransformer, TrainError> {
    device.seed(config.run.seed);
    match (&config.model.init, &config.model.weights) {
        (Init::Pretrained, Some(weights)) => {
            let preset = VitConfig::preset(&config.model.preset).expect("validated preset");
            let source = crate::Checkpoint::open(weights)?.config.unwrap_or(preset);
            let head = HeadInit::Fresh {
                num_classes: vit.num_classes,
            };
            let (model, loaded) = load_vit(weights, &source, head, device)?;
            Ok(if loaded.img_size != vit.img_size {
                model.set_input_size(&loaded, vit.img_size).0
            } else {
                model
            })
        }
        _ => Ok(vit.init(device)),
    }
}

/// Loss and accuracy of `model` on `images`.
fn evaluate(
    model: &VisionTransformer,
    images: &[gaze_data::LabeledImage],
    transform: &gaze_data::EvalTransform,
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
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    let scan_started = Instant::now();
    let train_scan = scan_images(&config.data.train, vit.num_classes, options.skip_bad)?;
    let val_scan = scan_images(&config.data.val, vit.num_classes, options.skip_bad)?;
    observer.message(&format!(
        "scanned {} training and {} validation images in {:.1} s",
        train_scan.images.len(),
        val_scan.images.len(),
        scan_started.elapsed().as_secs_f64()
    ));
    let train_device = device.clone().autodiff();
    let mut model = initial_model(config, &vit, &train_device)?;
    let mut optim = build_optimizer(&config.optim);
    let mut state = RunState {
        skipped_images: train_scan.skipped + val_scan.skipped,
        ..RunState::default()
    };
    if options.resume {
        if let Some((m, o, s)) = load_checkpoint::<_, RunState>(out, model.clone(), optim)? {
            observer.message(&format!("resuming at epoch {}, batch {}", s.epoch + 1, s.batch));
            (model, optim, state) = (m, o, s);
        } else {
            observer.message("no checkpoint to resume from; starting fresh");
            optim = build_optimizer(&config.optim);
        }
    }
    gaze_data::write_atomic(&out.join("config.toml"), config.to_toml().as_bytes())
        .map_err(|e| io_err(&out.join("config.toml"), e))?;

    let eval_transform = vit.eval_transform();
    let train_transform = data::train_transform(config, &eval_transform);
    let batch_size = config.data.batch_size;
    let batches = train_scan.images.len().div_ceil(batch_size);
    let steps_per_epoch = batches.div_ceil(config.optim.grad_accum);
    let total_steps = steps_per_epoch * config.schedule.epochs;
    let mut steps_this_run = 0usize;

    while state.epoch < config.schedule.epochs {
        let epoch = state.epoch;
        let order = data::epoch_order(train_scan.images.len(), config.run.seed, epoch);
        let (tx, rx) = sync_channel(2);
        let first = state.batch;
        let loader = {
            let images = train_scan.images.clone();
            let transform = train_transform.clone();
            let seed = config.run.seed;
            let pool = data::worker_pool(config.data.workers);
            std::thread::spawn(move || {
                for b in first..batches {
                    let idx = &order[b * batch_size..((b + 1) * batch_size).min(order.len())];
                    let batch = pool.install(|| data::train_batch(&images, idx, &transform, seed, epoch));
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            })
        };
        let mut accumulator = GradientsAccumulator::new();
        let mut pending = 0usize;
        let mut lr = learning_rate(&config.schedule, config.optim.lr, state.step, total_steps);
        let mut stopped = false;
        for b in first..batches {
            let started = Instant::now();
            let (pixels, labels) = rx
                .recv()
                .map_err(|_| io_err(&config.data.train, "data loader stopped"))??;
            let n = labels.len();
            let size = eval_transform.size as usize;
            let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, size, size]), &train_device);
            let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &train_device);
            let (loss, correct) = cross_entropy(model.forward(images), labels, config.optim.label_smoothing);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            let grads = loss.div_scalar(config.optim.grad_accum as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
            pending += 1;
            if pending == config.optim.grad_accum || b + 1 == batches {
                lr = learning_rate(&config.schedule, config.optim.lr, state.step, total_steps);
                model = optim.step(lr, model, accumulator.grads());
                pending = 0;
                state.step += 1;
                steps_this_run += 1;
            }
            let r = &mut state.running;
            r.loss_sum += loss_value * n as f64;
            r.correct += correct;
            r.seen += n;
            r.seconds += started.elapsed().as_secs_f64();
            state.batch = b + 1;
            observer.batch(&BatchProgress {
                epoch,
                batch: b,
                batches,
                loss: r.loss_sum / r.seen as f64,
                accuracy: r.correct as f64 / r.seen as f64,
                lr,
                images_per_s: r.seen as f64 / r.seconds.max(1e-9),
            });
            let at_boundary = pending == 0;
            let every = config.run.checkpoint_every;
            if at_boundary && b + 1 < batches && every > 0 && state.step.is_multiple_of(every) {
                save_checkpoint(out, &model, &optim, &state)?;
            }
            if at_boundary && options.max_steps.is_some_and(|m| steps_this_run >= m) && b + 1 < batches {
                save_checkpoint(out, &model, &optim, &state)?;
                stopped = true;
                break;
            }
        }
        drop(rx);
        let _ = loader.join();
        if stopped {
            observer.message(&format!(
                "stopped after {steps_this_run} steps (checkpoint written)"
            ));
            return Ok(summary(&state, config));
        }
        let r = std::mem::take(&mut state.running);
        state.seconds += r.seconds;
        let last_epoch = epoch + 1 == config.schedule.epochs;
        let (val_loss, val_acc) = if (epoch + 1).is_multiple_of(config.run.eval_every.max(1)) || last_epoch {
            let (l, a) = evaluate(
                &model.valid(),
                &val_scan.images,
                &eval_transform,
                batch_size,
                device,
            )?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let row = EpochRow {
            epoch: epoch + 1,
            step: state.step,
            lr,
            train_loss: r.loss_sum / r.seen.max(1) as f64,
            train_acc: r.correct as f64 / r.seen.max(1) as f64,
            val_loss,
            val_acc,
            images_per_s: r.seen as f64 / r.seconds.max(1e-9),
            seconds: state.seconds,
        };
        if let Some(acc) = val_acc
            && state.best_val_acc.is_none_or(|best| acc > best)
        {
            state.best_val_acc = Some(acc);
            state.best_epoch = Some(epoch + 1);
            save_vit(&model.valid(), &vit, &out.join("best.safetensors"))?;
        }
        observer.epoch(&row);
        state.rows.push(row);
        state.epoch += 1;
        state.batch = 0;
        save_checkpoint(out, &model, &optim, &state)?;
        write_metrics(out, &state.rows)?;
        if options.max_steps.is_some_and(|m| steps_this_run >= m) && !last_epoch {
            observer.message(&format!(
                "stopped after {steps_this_run} steps (checkpoint written)"
            ));
            return Ok(summary(&state, config));
        }
    }
    let summary = summary(&state, config);
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

fn summary(state: &RunState, config: &TrainConfig) -> Summary {
    Summary {
        best_val_accuracy: state.best_val_acc,
        best_epoch: state.best_epoch,
        final_val_accuracy: state.rows.last().and_then(|r| r.val_acc),
        epochs: config.schedule.epochs,
        steps: state.step,
        seconds: state.seconds,
        skipped_images: state.skipped_images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = ScheduleSection {
            epochs: 1,
            warmup_steps: 4,
            decay: Decay::Cosine,
            min_lr: 0.0,
        };
        let lrs: Vec<f64> = (0..10).map(|i| learning_rate(&s, 1.0, i, 10)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((lrs[4] - 1.0).abs() < 1e-12 && lrs[9].abs() < 1e-12);
        assert!(lrs[5..].windows(2).all(|w| w[1] < w[0]));
        let constant = ScheduleSection {
            decay: Decay::Constant,
            ..s
        };
        assert_eq!(learning_rate(&constant, 0.1, 9, 10), 0.1);
    }

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
