//! The one training loop: epochs of micro-batches, gradient accumulation, the learning-rate
//! schedule, validation, the resumable checkpoint and the metrics file. A model's training
//! says what a batch is, how its loss is computed and what an epoch writes, as a [`Task`].
//!
//! With the same seed a resumed run equals an uninterrupted one bit for bit: the data order
//! is a function of `(seed, epoch)` ([`epoch_order`]), a task's augmentation must be one of
//! `(seed, epoch, example)`, and the checkpoint holds the weights, the optimizer state and
//! the running sums of the epoch in progress.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Tensor;
use gaze_data::rng::Rng;
use serde::{Deserialize, Serialize};

use crate::run_folder::{load_checkpoint, save_checkpoint, write_metrics};
use crate::{OptimSection, RunSection, ScheduleSection, TrainError, build_optimizer, learning_rate};

/// What one micro-batch's loss was computed over.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Predictions whose argmax was the target.
    pub correct: usize,
    /// Predictions the loss averages over (images for a classifier, tokens for a captioner).
    pub counted: usize,
    /// Examples (images) in the batch.
    pub examples: usize,
}

/// A model's side of [`fit`].
pub trait Task {
    /// The model under training, on an autodiff device.
    type Model: Module;
    /// One micro-batch, as [`Task::batches`] produces it.
    type Batch;

    /// Training examples in an epoch.
    fn examples(&self) -> usize;

    /// The micro-batches of `epoch`, one per list of example indices, in that order. Loading
    /// may run ahead on other threads; dropping the iterator stops it.
    fn batches(
        &self,
        epoch: usize,
        batches: Vec<Vec<usize>>,
    ) -> Box<dyn Iterator<Item = Result<Self::Batch, TrainError>> + '_>;

    /// The mean loss of `batch` under `model`, and what it was computed over.
    fn loss(&self, model: &Self::Model, batch: Self::Batch) -> (Tensor<1>, Tally);

    /// At an epoch's end: the validation loss and accuracy when `evaluate`.
    fn validate(&mut self, model: &Self::Model, evaluate: bool) -> Result<Option<(f64, f64)>, TrainError>;

    /// At an epoch's end, after [`Task::validate`]: writes the epoch's model files;
    /// `improved` says its validation accuracy is the best so far.
    fn save_epoch(&mut self, model: &Self::Model, improved: bool) -> Result<(), TrainError>;

    /// Examples left out of the data (unreadable images skipped), for the summary.
    fn skipped_examples(&self) -> usize {
        0
    }
}

/// What [`fit`] needs of a run's config.
#[derive(Debug, Clone, Copy)]
pub struct FitConfig<'a> {
    pub optim: &'a OptimSection,
    pub schedule: &'a ScheduleSection,
    pub run: &'a RunSection,
    /// Examples per micro-batch.
    pub batch_size: usize,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    /// Optimizer steps taken so far.
    pub step: usize,
    /// Learning rate of the epoch's last step.
    #[serde(with = "crate::exact")]
    pub lr: f64,
    #[serde(with = "crate::exact")]
    pub train_loss: f64,
    #[serde(with = "crate::exact")]
    pub train_acc: f64,
    #[serde(with = "crate::exact::option")]
    pub val_loss: Option<f64>,
    #[serde(with = "crate::exact::option")]
    pub val_acc: Option<f64>,
    #[serde(with = "crate::exact")]
    pub images_per_s: f64,
    /// Training seconds so far (across resumes).
    #[serde(with = "crate::exact")]
    pub seconds: f64,
    /// Estimated training seconds left after this epoch, at its speed (validation not counted).
    #[serde(default, with = "crate::exact")]
    pub eta_s: f64,
}

/// Seconds to train `images` more at `images_per_s`.
fn eta(images: usize, images_per_s: f64) -> f64 {
    images as f64 / images_per_s.max(1e-9)
}

/// Running sums of the epoch in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Running {
    /// Loss times [`Tally::counted`], summed.
    #[serde(with = "crate::exact")]
    loss_sum: f64,
    correct: usize,
    counted: usize,
    seen: usize,
    #[serde(with = "crate::exact")]
    seconds: f64,
}

impl Running {
    fn per_counted(&self, value: f64) -> f64 {
        value / self.counted.max(1) as f64
    }

    fn images_per_s(&self) -> f64 {
        self.seen as f64 / self.seconds.max(1e-9)
    }
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
    #[serde(with = "crate::exact::option")]
    best_val_acc: Option<f64>,
    best_epoch: Option<usize>,
    #[serde(with = "crate::exact")]
    seconds: f64,
    skipped_images: usize,
}

/// How a run went (`summary.json` of a classifier's run).
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

/// What [`fit`] returns: the model and how far the run got.
pub struct Fitted<M> {
    pub model: M,
    pub summary: Summary,
    /// Every epoch was trained (else the run stopped early at `max_steps`, leaving a
    /// checkpoint to resume from).
    pub finished: bool,
    /// The epoch rows, as `metrics.csv` has them.
    pub rows: Vec<EpochRow>,
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
    /// Optimizer steps taken, and in the whole run.
    pub step: usize,
    pub total_steps: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Estimated training seconds left in the run at the epoch's speed so far.
    pub eta_s: f64,
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

/// Example order of `epoch`: a permutation that depends only on the seed and the epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::derive(seed, &[0x5EED, epoch as u64]).shuffle(&mut order);
    order
}

/// Trains `model` for `task` as `config` says, in the run folder `out` (`last/` and
/// `metrics.csv`; the task writes its own model files). With `options.resume` it continues
/// from `out/last/` when there is one.
pub fn fit<T: Task>(
    task: &mut T,
    model: T::Model,
    config: FitConfig<'_>,
    out: &Path,
    options: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<Fitted<T::Model>, TrainError> {
    let FitConfig {
        optim: optim_config,
        schedule,
        run,
        batch_size,
    } = config;
    let mut model = model;
    let mut optim = build_optimizer(optim_config);
    let mut state = RunState {
        skipped_images: task.skipped_examples(),
        ..RunState::default()
    };
    if options.resume {
        if let Some((m, o, s)) = load_checkpoint::<_, RunState>(out, model.clone(), optim)? {
            observer.message(&format!("resuming at epoch {}, batch {}", s.epoch + 1, s.batch));
            (model, optim, state) = (m, o, s);
            // A kill after the checkpoint and before metrics.csv would otherwise lose rows.
            if !state.rows.is_empty() {
                write_metrics(out, &state.rows)?;
            }
        } else {
            observer.message("no checkpoint to resume from; starting fresh");
            optim = build_optimizer(optim_config);
        }
    }
    let examples = task.examples();
    let batches = examples.div_ceil(batch_size);
    let grad_accum = optim_config.grad_accum;
    let steps_per_epoch = batches.div_ceil(grad_accum);
    let total_steps = steps_per_epoch * schedule.epochs;
    let mut steps_this_run = 0usize;
    let stopped = |steps_this_run: usize| options.max_steps.is_some_and(|m| steps_this_run >= m);

    while state.epoch < schedule.epochs {
        let epoch = state.epoch;
        let order = epoch_order(examples, run.seed, epoch);
        let first = state.batch;
        let lists = (first..batches)
            .map(|b| order[b * batch_size..((b + 1) * batch_size).min(order.len())].to_vec())
            .collect();
        let mut loaded = task.batches(epoch, lists);
        let mut accumulator = GradientsAccumulator::new();
        let mut pending = 0usize;
        let mut lr = learning_rate(schedule, optim_config.lr, state.step, total_steps);
        for b in first..batches {
            let started = Instant::now();
            let batch = loaded.next().ok_or_else(|| TrainError::Io {
                path: out.to_path_buf(),
                message: "the data loader stopped".into(),
            })??;
            let (loss, tally) = task.loss(&model, batch);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged(format!(
                    "epoch {}, batch {}, step {}: the loss is {loss_value}; the run diverged. Lower optim.lr (now {}) or check the data",
                    epoch + 1,
                    b + 1,
                    state.step + 1,
                    optim_config.lr
                )));
            }
            let grads = loss.div_scalar(grad_accum as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
            pending += 1;
            if pending == grad_accum || b + 1 == batches {
                lr = learning_rate(schedule, optim_config.lr, state.step, total_steps);
                model = optim.step(lr, model, accumulator.grads());
                pending = 0;
                state.step += 1;
                steps_this_run += 1;
            }
            let r = &mut state.running;
            r.loss_sum += loss_value * tally.counted as f64;
            r.correct += tally.correct;
            r.counted += tally.counted;
            r.seen += tally.examples;
            r.seconds += started.elapsed().as_secs_f64();
            state.batch = b + 1;
            observer.batch(&BatchProgress {
                epoch,
                batch: b,
                batches,
                loss: r.per_counted(r.loss_sum),
                accuracy: r.per_counted(r.correct as f64),
                lr,
                images_per_s: r.images_per_s(),
                step: state.step,
                total_steps,
                epochs: schedule.epochs,
                eta_s: eta(
                    (examples * (schedule.epochs - epoch)).saturating_sub(r.seen),
                    r.images_per_s(),
                ),
            });
            let mid_epoch = pending == 0 && b + 1 < batches;
            let every = run.checkpoint_every;
            if mid_epoch && every > 0 && state.step.is_multiple_of(every) {
                save_checkpoint(out, &model, &optim, &state)?;
            }
            if mid_epoch && stopped(steps_this_run) {
                drop(loaded);
                save_checkpoint(out, &model, &optim, &state)?;
                return Ok(stop_early(model, &state, schedule, steps_this_run, observer));
            }
        }
        drop(loaded);
        let r = std::mem::take(&mut state.running);
        state.seconds += r.seconds;
        let last_epoch = epoch + 1 == schedule.epochs;
        let evaluate = (epoch + 1).is_multiple_of(run.eval_every.max(1)) || last_epoch;
        let validation = task.validate(&model, evaluate)?;
        let (val_loss, val_acc) = (validation.map(|v| v.0), validation.map(|v| v.1));
        let row = EpochRow {
            epoch: epoch + 1,
            step: state.step,
            lr,
            train_loss: r.per_counted(r.loss_sum),
            train_acc: r.per_counted(r.correct as f64),
            val_loss,
            val_acc,
            images_per_s: r.images_per_s(),
            seconds: state.seconds,
            eta_s: eta(examples * (schedule.epochs - epoch - 1), r.images_per_s()),
        };
        let improved = val_acc.is_some_and(|acc| state.best_val_acc.is_none_or(|best| acc > best));
        if improved {
            state.best_val_acc = val_acc;
            state.best_epoch = Some(epoch + 1);
        }
        task.save_epoch(&model, improved)?;
        observer.epoch(&row);
        state.rows.push(row);
        state.epoch += 1;
        state.batch = 0;
        save_checkpoint(out, &model, &optim, &state)?;
        write_metrics(out, &state.rows)?;
        if stopped(steps_this_run) && !last_epoch {
            return Ok(stop_early(model, &state, schedule, steps_this_run, observer));
        }
    }
    Ok(Fitted {
        model,
        summary: summary(&state, schedule),
        finished: true,
        rows: state.rows,
    })
}

fn stop_early<M>(
    model: M,
    state: &RunState,
    schedule: &ScheduleSection,
    steps_this_run: usize,
    observer: &mut dyn Observer,
) -> Fitted<M> {
    observer.message(&format!(
        "stopped after {steps_this_run} steps (checkpoint written)"
    ));
    Fitted {
        model,
        summary: summary(state, schedule),
        finished: false,
        rows: state.rows.clone(),
    }
}

fn summary(state: &RunState, schedule: &ScheduleSection) -> Summary {
    Summary {
        best_val_accuracy: state.best_val_acc,
        best_epoch: state.best_epoch,
        final_val_accuracy: state.rows.last().and_then(|r| r.val_acc),
        epochs: schedule.epochs,
        steps: state.step,
        seconds: state.seconds,
        skipped_images: state.skipped_images,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_state_floats_read_back_bit_for_bit() {
        let value = |k: usize| k as f64 / 300.0;
        let rows = (0..300)
            .map(|k| EpochRow {
                epoch: k,
                step: k,
                lr: value(k) * 3e-4,
                train_loss: value(k) * 2.5,
                train_acc: value(k),
                val_loss: Some(value(299 - k)),
                val_acc: Some(value(k)),
                images_per_s: value(k) * 17.0,
                seconds: value(k) * 1e4,
                eta_s: value(k) * 3e3,
            })
            .collect();
        let state = RunState {
            epoch: 3,
            batch: 7,
            step: 100,
            running: Running {
                loss_sum: value(1) * 123.0,
                correct: 5,
                counted: 9,
                seen: 9,
                seconds: value(2),
            },
            rows,
            best_val_acc: Some(value(299)),
            best_epoch: Some(299),
            seconds: value(7) * 1e3,
            skipped_images: 0,
        };
        let text = serde_json::to_vec_pretty(&state).unwrap();
        let back: RunState = serde_json::from_slice(&text).unwrap();
        let bits = |s: &RunState| {
            let mut all = vec![
                s.running.loss_sum,
                s.running.seconds,
                s.seconds,
                s.best_val_acc.unwrap(),
            ];
            for r in &s.rows {
                all.extend([
                    r.lr,
                    r.train_loss,
                    r.train_acc,
                    r.val_loss.unwrap(),
                    r.val_acc.unwrap(),
                ]);
                all.extend([r.images_per_s, r.seconds]);
            }
            all.into_iter().map(f64::to_bits).collect::<Vec<_>>()
        };
        let (want, got) = (bits(&state), bits(&back));
        let differing = want.iter().zip(&got).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing,
            0,
            "{differing} of {} values came back different",
            want.len()
        );
    }
}
