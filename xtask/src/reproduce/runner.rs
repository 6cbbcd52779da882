//! Running `gaze` steps: each names its inputs and outputs and is skipped when every output
//! exists and is newer than every input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, bail};

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Every output exists and is newer than every input.
pub fn up_to_date(outputs: &[PathBuf], inputs: &[PathBuf]) -> bool {
    let Some(oldest_out) = outputs
        .iter()
        .map(|p| modified(p))
        .collect::<Option<Vec<_>>>()
        .and_then(|t| t.into_iter().min())
    else {
        return false;
    };
    inputs.iter().filter_map(|p| modified(p)).all(|t| t <= oldest_out)
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// gaze commands that take `--device`.
const ON_DEVICE: [&str; 6] = [
    "train",
    "caption-train",
    "eval",
    "predict",
    "attention",
    "caption",
];

/// Runs the steps of one reproduction with one `gaze` binary.
pub struct Runner {
    pub gaze: PathBuf,
    /// Extra environment of every gaze run (libtorch's library path for `tch`).
    pub env: Vec<(String, String)>,
    pub device: String,
    pub done: usize,
    pub skipped: usize,
}

impl Runner {
    /// Runs `gaze args` unless `outputs` are up to date with `inputs`, and checks that it
    /// wrote every output.
    pub fn step(
        &mut self,
        name: &str,
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        args: &[String],
    ) -> Result<()> {
        if up_to_date(outputs, inputs) {
            self.skip(name);
            return Ok(());
        }
        let mut args = args.to_vec();
        if args.first().is_some_and(|c| ON_DEVICE.contains(&c.as_str())) {
            args.extend(["--device".into(), self.device.clone()]);
        }
        println!("[run ] {name}: gaze {}", args.join(" "));
        let started = Instant::now();
        let status = Command::new(&self.gaze)
            .args(&args)
            .envs(self.env.iter().cloned())
            .status()
            .with_context(|| format!("could not start {}", self.gaze.display()))?;
        if !status.success() {
            bail!("step `{name}` failed ({status})");
        }
        for out in outputs {
            if !out.exists() {
                bail!("step `{name}` did not write {}", out.display());
            }
        }
        println!("[done] {name} in {:.1} s", started.elapsed().as_secs_f64());
        self.done += 1;
        Ok(())
    }

    /// Counts and reports a step whose outputs are up to date.
    pub fn skip(&mut self, name: &str) {
        println!("[skip] {name} (outputs are newer than inputs)");
        self.skipped += 1;
    }

    /// `gaze compare` of one run folder: its validation curve, `dir/val_curves.png`.
    pub fn learning_curves(&mut self, name: &str, run: &Path, dir: &Path) -> Result<PathBuf> {
        let curves = dir.join("val_curves.png");
        self.step(
            name,
            &[run.join("summary.json")],
            std::slice::from_ref(&curves),
            &["compare".into(), arg(run), "--out".into(), arg(dir)],
        )?;
        Ok(curves)
    }
}

/// Reads the JSON record at `path` that a step wrote.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: could not read", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not the record gaze writes", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_skipped_only_when_outputs_are_newer() {
        let dir = std::env::temp_dir().join(format!("xtask-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (input, output) = (dir.join("in"), dir.join("out"));
        std::fs::write(&input, "a").unwrap();
        assert!(!up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&output, "b").unwrap();
        assert!(up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&input, "c").unwrap();
        assert!(!up_to_date(
            std::slice::from_ref(&output),
            std::slice::from_ref(&input)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
