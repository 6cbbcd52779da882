//! Comparing finished runs: the settings that differ between their configs, and each run's
//! best validation accuracy, epoch and time, from the files of its run folder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::run_folder::read_metrics;
use crate::{EpochRow, TrainError, io_err};

/// One run folder, read for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The folder's name.
    pub name: String,
    /// Every key of its `config.toml` (`section.key`) with its value, the data locations left
    /// out: they differ between machines, not between settings.
    pub settings: BTreeMap<String, String>,
    /// `metrics.csv`.
    pub rows: Vec<EpochRow>,
}

impl RunRecord {
    /// Reads `dir/config.toml` (any model's: it is read as plain TOML) and `dir/metrics.csv`.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let config: toml::Table = text
            .parse()
            .map_err(|e| io_err(&path, format!("not a run config: {e}")))?;
        let mut settings = BTreeMap::new();
        flatten("", &toml::Value::Table(config), &mut settings);
        settings.retain(|k, _| {
            !k.starts_with("data.train")
                && !k.starts_with("data.val")
                && k != "data.dir"
                && k != "model.weights"
        });
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            settings,
            rows: read_metrics(dir)?,
        })
    }

    /// The best validation accuracy and its epoch (the first of equals).
    pub fn best(&self) -> Option<(f64, usize)> {
        self.rows
            .iter()
            .filter_map(|r| r.val_acc.map(|a| (a, r.epoch)))
            .fold(None, |best, (a, e)| match best {
                Some((b, _)) if b >= a => best,
                _ => Some((a, e)),
            })
    }

    /// Training seconds of the last epoch written.
    pub fn seconds(&self) -> f64 {
        self.rows.last().map_or(0.0, |r| r.seconds)
    }
}

fn flatten(prefix: &str, value: &toml::Value, into: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, into);
            }
        }
        other => {
            into.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A Markdown table of `runs`: the settings that differ between them, then each run's best
/// validation accuracy, its epoch and the training time.
pub fn comparison_table(runs: &[RunRecord]) -> String {
    let keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            runs.iter()
                .any(|r| r.settings.get(*k) != runs[0].settings.get(*k))
        })
        .collect();
    let mut md = String::from("| run |");
    for k in &differing {
        md.push_str(&format!(" {k} |"));
    }
    md.push_str(" best val acc | epoch | time (s) |\n|---|");
    md.push_str(&"---|".repeat(differing.len() + 3));
    md.push('\n');
    for r in runs {
        md.push_str(&format!("| {} |", r.name));
        for k in &differing {
            md.push_str(&format!(
                " {} |",
                r.settings.get(*k).map(String::as_str).unwrap_or("-")
            ));
        }
        match r.best() {
            Some((acc, epoch)) => md.push_str(&format!(
                " {:.2} % | {epoch} | {:.0} |\n",
                100.0 * acc,
                r.seconds()
            )),
            None => md.push_str(&format!(" - | - | {:.0} |\n", r.seconds())),
        }
    }
    md
}
