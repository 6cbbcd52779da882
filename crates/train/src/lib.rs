//! Training any of gaze's models: one resumable loop ([`fit`]) over a model's [`Task`], the
//! config sections every run shares, the learning-rate schedule, PyTorch's SGD, and the
//! run folder's files.
//!
//! A run folder holds `config.toml` (the resolved config), `metrics.csv` (one row per epoch),
//! the task's model files, `summary.json`, and `last/`, the resumable checkpoint (weights and
//! optimizer state as burnpack files, which keep parameter identities, and `state.json` with
//! the position in the data, the metrics so far and the running sums). `last/` is replaced
//! by renames, so a run killed at any moment resumes from the newest one complete, and a
//! [`RunFolder`] lock keeps a second run out while one writes.

mod compare;
mod config;
mod exact;
mod fit;
mod run_folder;
mod schedule;
mod sgd;

use std::path::{Path, PathBuf};

pub use compare::{RunRecord, comparison_table};
pub use config::*;
pub use fit::{
    BatchProgress, EpochRow, FitConfig, Fitted, Observer, Quiet, RunOptions, Summary, Tally, Task,
    epoch_order, fit,
};
pub use run_folder::{RunFolder, load_checkpoint, read_metrics, save_checkpoint, write_json, write_metrics};
pub use schedule::{build_optimizer, learning_rate};
pub use sgd::{Sgd, SgdState};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] gaze_data::DataError),
    #[error(transparent)]
    Load(#[from] gaze_nn::checkpoint::LoadError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// A loss or a validation metric that is not a finite number.
    #[error("{0}")]
    Diverged(String),
}

/// An I/O failure on `path`.
pub fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
