//! The files of a run folder that every training writes: the resumable checkpoint `last/`,
//! `metrics.csv`, and JSON summaries; and the folder's lock.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::Serialize;

use crate::{EpochRow, TrainError, io_err};

/// A run folder held by this process: a lock on `.lock` inside refuses a second writer while
/// this one lives (the operating system releases it when the process dies, however it dies).
/// Dropped without a file written, a folder it created is removed again.
#[derive(Debug)]
pub struct RunFolder {
    path: PathBuf,
    _lock: std::fs::File,
    created: bool,
}

const LOCK: &str = ".lock";

impl RunFolder {
    /// Takes `out` for a run: creates it if needed and locks it. A folder that holds anything
    /// is reused only with `resume`, and only if it holds a checkpoint or no finished epoch.
    /// Temporary files of killed writers are removed.
    pub fn open(out: &Path, resume: bool) -> Result<Self, TrainError> {
        let created = !out.exists();
        std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
        let lock_path = out.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io_err(
                    out,
                    "another gaze run is writing this run folder; wait for it to finish or choose another --out",
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, e)),
        }
        let folder = Self {
            path: out.to_path_buf(),
            _lock: lock,
            created,
        };
        let used = !folder.holds_only_the_lock();
        let checkpoint = gaze_data::replaced_dir(&out.join("last"), STATE).is_some();
        if used && !resume {
            return Err(io_err(
                out,
                "a run is already there; pass --resume to continue it or choose another --out",
            ));
        }
        if used && !checkpoint && out.join("metrics.csv").exists() {
            return Err(io_err(
                out,
                "metrics.csv lists finished epochs but no checkpoint (last/) is left to resume from; choose another --out",
            ));
        }
        // Only now that the folder is known to be a run of ours.
        gaze_data::remove_stale_temps(out).map_err(|e| io_err(out, e))?;
        Ok(folder)
    }

    fn holds_only_the_lock(&self) -> bool {
        std::fs::read_dir(&self.path).is_ok_and(|entries| entries.flatten().all(|e| e.file_name() == LOCK))
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        if self.created && self.holds_only_the_lock() {
            let _ = std::fs::remove_file(self.path.join(LOCK));
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Writes `value` as pretty JSON, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io_err(path, e))?;
    gaze_data::write_atomic(path, &bytes).map_err(|e| io_err(path, e))
}

/// Writes `out/metrics.csv`, one row per epoch.
pub fn write_metrics(out: &Path, rows: &[EpochRow]) -> Result<(), TrainError> {
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
    let mut csv =
        String::from("epoch,step,lr,train_loss,train_acc,val_loss,val_acc,images_per_s,seconds,eta_s\n");
    for r in rows {
        csv.push_str(&format!(
            "{},{},{:.6e},{:.6},{:.6},{},{},{:.3},{:.1},{:.1}\n",
            r.epoch,
            r.step,
            r.lr,
            r.train_loss,
            r.train_acc,
            fmt(r.val_loss),
            fmt(r.val_acc),
            r.images_per_s,
            r.seconds,
            r.eta_s
        ));
    }
    let path = out.join("metrics.csv");
    gaze_data::write_atomic(&path, csv.as_bytes()).map_err(|e| io_err(&path, e))
}

/// Reads `out/metrics.csv` as [`write_metrics`] wrote it (its values rounded as printed).
pub fn read_metrics(out: &Path) -> Result<Vec<EpochRow>, TrainError> {
    let path = out.join("metrics.csv");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let bad = |line: usize| io_err(&path, format!("line {line} is not a metrics row"));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let mut fields: Vec<&str> = line.split(',').collect();
        if fields.len() == 9 {
            // Written before the eta_s column.
            fields.push("0");
        }
        let [
            epoch,
            step,
            lr,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            images_per_s,
            seconds,
            eta_s,
        ] = fields[..]
        else {
            return Err(bad(i + 1));
        };
        let number = |v: &str| v.parse::<f64>().map_err(|_| bad(i + 1));
        let optional = |v: &str| {
            if v.is_empty() {
                Ok(None)
            } else {
                number(v).map(Some)
            }
        };
        rows.push(EpochRow {
            epoch: epoch.parse().map_err(|_| bad(i + 1))?,
            step: step.parse().map_err(|_| bad(i + 1))?,
            lr: number(lr)?,
            train_loss: number(train_loss)?,
            train_acc: number(train_acc)?,
            val_loss: optional(val_loss)?,
            val_acc: optional(val_acc)?,
            images_per_s: number(images_per_s)?,
            seconds: number(seconds)?,
            eta_s: number(eta_s)?,
        });
    }
    Ok(rows)
}

/// The resumable checkpoint's file that is written last: a folder holding it is complete.
const STATE: &str = "state.json";

/// Writes the resumable checkpoint `out/last/` (model and optimizer as burnpack files, which
/// keep parameter identities, and `state`, written last), replacing the previous one whole
/// ([`gaze_data::replace_dir`]).
pub fn save_checkpoint<M: Module>(
    out: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    state: &impl Serialize,
) -> Result<(), TrainError> {
    let last = out.join("last");
    gaze_data::replace_dir(&last, STATE, |tmp| {
        let failed = |path: &Path, e: &dyn std::fmt::Display| {
            std::io::Error::other(format!("{}: {e}", path.display()))
        };
        let model_path = tmp.join("model.bpk");
        model
            .save_into(&mut BurnpackStore::from_file(&model_path).overwrite(true))
            .map_err(|e| failed(&model_path, &e))?;
        let optim_path = tmp.join("optim.bpk");
        optim.save(&optim_path).map_err(|e| failed(&optim_path, &e))?;
        let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
        gaze_data::write_atomic(&tmp.join(STATE), &bytes)
    })
    .map_err(|e| io_err(&last, e))
}

/// Reads what [`save_checkpoint`] wrote into `model` and `optim`, or `None` if `out` has no
/// checkpoint.
pub fn load_checkpoint<M: Module, S: serde::de::DeserializeOwned>(
    out: &Path,
    mut model: M,
    optim: ModuleOptimizer,
) -> Result<Option<(M, ModuleOptimizer, S)>, TrainError> {
    let dir = out.join("last");
    if !gaze_data::settle_dir(&dir, STATE).map_err(|e| io_err(&dir, e))? {
        return Ok(None);
    }
    let state_path = dir.join(STATE);
    let text = std::fs::read(&state_path).map_err(|e| io_err(&state_path, e))?;
    let state: S = serde_json::from_slice(&text).map_err(|e| io_err(&state_path, e))?;
    // Read into memory whole: a store reading from the file would keep reading it lazily
    // after the next checkpoint has removed it.
    let read = |path: &Path| {
        std::fs::read(path)
            .map(burn::tensor::Bytes::from_bytes_vec)
            .map_err(|e| io_err(path, e))
    };
    let model_path = dir.join("model.bpk");
    let result = model
        .load_from(&mut BurnpackStore::from_bytes(Some(read(&model_path)?)))
        .map_err(|e| io_err(&model_path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(io_err(
            &model_path,
            "checkpoint does not match the configured model; start a new run folder",
        ));
    }
    let optim_path = dir.join("optim.bpk");
    let optim = optim
        .from_bytes(read(&optim_path)?)
        .map_err(|e| io_err(&optim_path, e))?;
    Ok(Some((model, optim, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!("gaze-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let row = |epoch: usize, val_acc: Option<f64>| EpochRow {
            epoch,
            step: 10 * epoch,
            lr: 3e-4,
            train_loss: 0.5,
            train_acc: 0.75,
            val_loss: val_acc.map(|_| 0.25),
            val_acc,
            images_per_s: 12.5,
            seconds: 30.0,
            eta_s: 60.0 / epoch as f64,
        };
        let rows = vec![row(1, None), row(2, Some(0.875))];
        write_metrics(&dir, &rows).unwrap();
        assert_eq!(read_metrics(&dir).unwrap(), rows);
        let before_eta = "epoch,step,lr,train_loss,train_acc,val_loss,val_acc,images_per_s,seconds\n\
                          2,20,3.000000e-4,0.500000,0.750000,0.250000,0.875000,12.500,30.0\n";
        std::fs::write(dir.join("metrics.csv"), before_eta).unwrap();
        assert_eq!(
            read_metrics(&dir).unwrap(),
            [EpochRow {
                eta_s: 0.0,
                ..rows[1].clone()
            }]
        );
        std::fs::write(dir.join("metrics.csv"), "header\n1,2,3\n").unwrap();
        assert!(read_metrics(&dir).unwrap_err().to_string().contains("line 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
