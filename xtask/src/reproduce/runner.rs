//! Running `gaze` steps. Each step records a stamp (`stamps/<step>.json` in the mode's
//! folder): its command line, the identity of every input (size and modification time; a
//! folder's files, all of them) and the gaze binary's version and backend. A step runs when
//! an output is missing or its stamp differs; a missing input is an error that names it.
//!
//! Training steps keep their run folder and resume it: a training step whose stamp changed
//! refuses, naming what changed, since its folder would mix two runs (`--fresh` starts the
//! reproduction over). The binary is not part of a training stamp, so a run trained on one
//! backend is kept when another evaluates it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

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

/// What a step did last time: enough to tell whether running it again would do the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    command: Vec<String>,
    /// Input path and its identity ([`identity`]).
    inputs: BTreeMap<String, String>,
    /// The gaze binary's version and backend (`None` for training steps).
    gaze: Option<String>,
}

impl Stamp {
    /// What differs from `earlier`, in words.
    fn changes_since(&self, earlier: &Stamp) -> Vec<String> {
        let mut changes = Vec::new();
        if self.command != earlier.command {
            changes.push(format!("the command (was `gaze {}`)", earlier.command.join(" ")));
        }
        for (path, id) in &self.inputs {
            match earlier.inputs.get(path) {
                Some(old) if old == id => {}
                Some(_) => changes.push(format!("the input {path}")),
                None => changes.push(format!("the new input {path}")),
            }
        }
        if self.gaze != earlier.gaze {
            changes.push("the gaze binary".into());
        }
        changes
    }
}

/// A file's size and modification time, or for a folder a digest of those of every file in
/// it (names included), so that an added, removed or changed image is a changed input.
pub fn identity(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}: missing input", path.display()))?;
    let of = |meta: &std::fs::Metadata| {
        let nanos = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!("{} bytes, modified {nanos}", meta.len())
    };
    if !meta.is_dir() {
        return Ok(of(&meta));
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}: could not list", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                let name = entry
                    .path()
                    .strip_prefix(path)
                    .unwrap_or(&entry.path())
                    .display()
                    .to_string();
                files.push(format!("{name}: {}", of(&meta)));
            }
        }
    }
    files.sort();
    // FNV-1a over the listing: a digest, not a secret.
    let digest = files.join("\n").bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    Ok(format!("{} files, digest {digest:016x}", files.len()))
}

/// Runs the steps of one reproduction with one `gaze` binary.
pub struct Runner {
    pub gaze: PathBuf,
    /// Extra environment of every gaze run (libtorch's library path for `tch`).
    pub env: Vec<(String, String)>,
    pub device: String,
    /// `gaze --version` and the backend it was built with.
    pub gaze_identity: String,
    /// Where the stamps are kept.
    pub stamps: PathBuf,
    pub done: usize,
    pub skipped: usize,
}

impl Runner {
    /// A runner of `gaze` (built with `backend`) whose stamps live in `stamps`.
    pub fn new(
        gaze: PathBuf,
        env: Vec<(String, String)>,
        device: &str,
        backend: &str,
        stamps: PathBuf,
    ) -> Result<Self> {
        let version = Command::new(&gaze)
            .arg("--version")
            .envs(env.iter().cloned())
            .output()
            .with_context(|| format!("could not start {}", gaze.display()))?;
        if !version.status.success() {
            bail!("{}: `--version` failed; is it a gaze binary?", gaze.display());
        }
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        Ok(Self {
            gaze,
            env,
            device: device.into(),
            gaze_identity: format!("{version} ({backend})"),
            stamps,
            done: 0,
            skipped: 0,
        })
    }

    /// Runs `gaze args` unless every output exists and the step's stamp is unchanged, then
    /// checks that it wrote every output.
    pub fn step(
        &mut self,
        name: &str,
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        args: &[String],
    ) -> Result<()> {
        let stamp = self.stamp(name, inputs, args, Some(self.gaze_identity.clone()))?;
        if outputs.iter().all(|o| o.exists()) && self.stored(name)?.as_ref() == Some(&stamp) {
            self.skip(name);
            return Ok(());
        }
        self.execute(name, args, outputs)?;
        self.save(name, &stamp)
    }

    /// A training step into its run folder: resumed when it was interrupted, skipped when
    /// finished with the same stamp, refused when the stamp changed.
    pub fn train(
        &mut self,
        name: &str,
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        args: &[String],
    ) -> Result<()> {
        let stamp = self.stamp(name, inputs, args, None)?;
        match self.stored(name)? {
            Some(earlier) if earlier != stamp => bail!(
                "step `{name}`: {} changed since its run was trained; pass --fresh to start the reproduction over",
                stamp.changes_since(&earlier).join(", ")
            ),
            Some(_) if outputs.iter().all(|o| o.exists()) => {
                self.skip(name);
                return Ok(());
            }
            _ => {}
        }
        // Stamped first: an interrupted run is resumed only by the same command.
        self.save(name, &stamp)?;
        let mut args = args.to_vec();
        args.push("--resume".into());
        self.execute(name, &args, outputs)
    }

    fn stamp(&self, name: &str, inputs: &[PathBuf], args: &[String], gaze: Option<String>) -> Result<Stamp> {
        let inputs = inputs
            .iter()
            .map(|p| {
                let id = identity(p).with_context(|| format!("step `{name}` needs {}", p.display()))?;
                Ok((arg(p), id))
            })
            .collect::<Result<_>>()?;
        Ok(Stamp {
            command: args.to_vec(),
            inputs,
            gaze,
        })
    }

    fn stamp_path(&self, name: &str) -> PathBuf {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        self.stamps.join(format!("{slug}.json"))
    }

    fn stored(&self, name: &str) -> Result<Option<Stamp>> {
        let path = self.stamp_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: could not read", path.display())),
        }
    }

    fn save(&self, name: &str, stamp: &Stamp) -> Result<()> {
        std::fs::create_dir_all(&self.stamps)?;
        gaze_data::write_atomic(&self.stamp_path(name), &serde_json::to_vec_pretty(stamp)?)?;
        Ok(())
    }

    fn execute(&mut self, name: &str, args: &[String], outputs: &[PathBuf]) -> Result<()> {
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

    /// Counts and reports a step that is up to date.
    fn skip(&mut self, name: &str) {
        println!("[skip] {name} (done, with the same command and inputs)");
        self.skipped += 1;
    }

    /// `gaze compare` of `runs`: their table, `dir/compare.md`, and validation curves,
    /// `dir/val_curves.png`.
    pub fn compare(&mut self, name: &str, runs: &[PathBuf], dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let (table, curves) = (dir.join("compare.md"), dir.join("val_curves.png"));
        let inputs: Vec<PathBuf> = runs.iter().map(|r| r.join("metrics.csv")).collect();
        let mut args = vec!["compare".to_string()];
        args.extend(runs.iter().map(|r| arg(r)));
        args.extend(["--out".into(), arg(dir)]);
        self.step(name, &inputs, &[table.clone(), curves.clone()], &args)?;
        Ok((table, curves))
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

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A stand-in `gaze` that appends its arguments to `log` and writes every path after
    /// `--out`.
    fn stub(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (path, log) = (dir.join("gaze"), dir.join("calls.log"));
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'gaze 0.0.0'; exit 0; fi\necho \"$@\" >> {}\nwhile [ $# -gt 0 ]; do if [ \"$1\" = --out ]; then echo x > \"$2\"; fi; shift; done\n",
            log.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (path, log)
    }

    fn calls(log: &Path) -> usize {
        std::fs::read_to_string(log).map_or(0, |t| t.lines().count())
    }

    #[test]
    fn steps_rerun_only_when_their_command_inputs_or_binary_change() {
        let dir = scratch("steps");
        let (gaze, log) = stub(&dir);
        let runner =
            |backend: &str| Runner::new(gaze.clone(), vec![], "auto", backend, dir.join("stamps")).unwrap();
        let (input, output) = (dir.join("in.txt"), dir.join("out.csv"));
        std::fs::write(&input, "a").unwrap();
        let predict = |r: &mut Runner, extra: &str| {
            let args = ["predict".to_string(), "--out".into(), arg(&output), extra.into()];
            r.step("predict", &[input.clone()], &[output.clone()], &args)
        };
        let mut r = runner("flex");
        predict(&mut r, "x").unwrap();
        predict(&mut r, "x").unwrap();
        assert_eq!((calls(&log), r.done, r.skipped), (1, 1, 1));
        // Another command, another binary, a changed input, a deleted output: each reruns.
        predict(&mut r, "y").unwrap();
        assert_eq!(calls(&log), 2);
        let mut other = runner("tch");
        predict(&mut other, "y").unwrap();
        assert_eq!(calls(&log), 3);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&input, "changed").unwrap();
        predict(&mut other, "y").unwrap();
        assert_eq!(calls(&log), 4);
        std::fs::remove_file(&output).unwrap();
        predict(&mut other, "y").unwrap();
        assert_eq!(calls(&log), 5);
        // A missing input is an error that names it, never a skip.
        std::fs::remove_file(&input).unwrap();
        let err = predict(&mut other, "y").unwrap_err();
        assert!(format!("{err:#}").contains("in.txt"), "{err:#}");
        assert_eq!(calls(&log), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_training_refuses_and_resumes_otherwise() {
        let dir = scratch("training");
        let (gaze, log) = stub(&dir);
        let runner =
            |backend: &str| Runner::new(gaze.clone(), vec![], "auto", backend, dir.join("stamps")).unwrap();
        let (config, run) = (dir.join("c.toml"), dir.join("run.txt"));
        std::fs::write(&config, "lr").unwrap();
        let train = |r: &mut Runner, lr: &str| {
            let args = ["train".to_string(), "--out".into(), arg(&run), lr.into()];
            r.train("train", &[config.clone()], &[run.clone()], &args)
        };
        let mut r = runner("flex");
        train(&mut r, "optim.lr=1").unwrap();
        let first = std::fs::read_to_string(&log).unwrap();
        assert!(first.contains("optim.lr=1 --resume --device auto"), "{first}");
        train(&mut r, "optim.lr=1").unwrap();
        assert_eq!(calls(&log), 1);
        let err = train(&mut r, "optim.lr=2").unwrap_err().to_string();
        assert!(err.contains("the command") && err.contains("--fresh"), "{err}");
        assert_eq!(calls(&log), 1);
        // Another backend evaluating the same run keeps it.
        train(&mut runner("tch"), "optim.lr=1").unwrap();
        assert_eq!(calls(&log), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
