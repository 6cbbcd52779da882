//! `gaze train` and `gaze caption-train`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use gaze_caption::train::{CaptionTrainConfig, train_captioner};
use gaze_nn::parse_device;
use gaze_train::{BatchProgress, EpochRow, Observer, RunOptions};
use gaze_vit::train::{TrainConfig, train};
use indicatif::ProgressBar;

use crate::progress::bar;

/// What every training command takes: the config, the run folder, resuming, the device.
#[derive(Args)]
struct RunArgs {
    /// Run configuration (TOML; see configs/).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Run folder [default: runs/<config file stem>].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue from the run folder's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after N optimizer steps, leaving a checkpoint (to test --resume).
    #[arg(long, hide = true)]
    max_steps: Option<usize>,
    /// Backend device (see `gaze predict --help`).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Without a terminal (nohup, slurm, `> log.txt`), print a progress line (step, loss,
    /// img/s, ETA) this often: a duration (30s, 2m, 500ms) or a number of steps (50). On a
    /// terminal a progress bar is drawn instead.
    #[arg(long, default_value = "30s", value_name = "EVERY", value_parser = parse_log_every)]
    log_every: LogEvery,
    /// Print errors only.
    #[arg(long, short)]
    quiet: bool,
    /// Config overrides, e.g. optim.lr=1e-3 schedule.epochs=2.
    #[arg(value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl RunArgs {
    /// The run folder, the device and the options (the training takes the folder, refusing a
    /// used one without --resume).
    fn prepare(&self, skip_bad: bool) -> Result<(PathBuf, burn::tensor::Device, RunOptions)> {
        let out = self.out.clone().unwrap_or_else(|| {
            let stem = self
                .config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            PathBuf::from("runs").join(stem)
        });
        let options = RunOptions {
            resume: self.resume,
            skip_bad,
            max_steps: self.max_steps,
        };
        Ok((out, parse_device(&self.device)?, options))
    }
}

/// Fine-tune or train a ViT from a TOML config (e.g. configs/vit_s16_384_pets.toml).
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Dataset root (overrides data.train and data.val): train/ and val/ folders, each in the
    /// course layout ({label}_{id}.jpg) or the ImageFolder one (a folder per class), or the
    /// Oxford-IIIT Pet download (images/ + annotations/: trainval.txt trains, test.txt
    /// validates).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Start from these timm weights (sets model.init = "pretrained").
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Leave unreadable images out (counted in summary.json) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// How the matrix products run (sets run.precision): fp32, or bf16 (bf16 operands, f32
    /// accumulation; AVX512_BF16 where the CPU has it, else emulated and slower; the flex
    /// device only) [default: the config's, else fp32].
    #[arg(long, value_name = "fp32|bf16")]
    precision: Option<gaze_nn::ops::Precision>,
}

/// How often a log without a terminal gets a progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LogEvery {
    Steps(usize),
    Every(Duration),
}

fn parse_log_every(text: &str) -> Result<LogEvery, String> {
    let bad = || format!("`{text}` is neither a number of steps (50) nor a duration (30s, 2m, 500ms)");
    if let Ok(steps) = text.parse::<usize>() {
        return (steps > 0).then_some(LogEvery::Steps(steps)).ok_or_else(bad);
    }
    let split = text.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(bad());
    }
    Ok(LogEvery::Every(Duration::from_secs_f64(seconds)))
}

/// `1h02m`, `4m05s`, `12s`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

/// What a training command prints: a bar per epoch on a terminal, else a progress line every
/// [`LogEvery`]; a line per epoch either way; nothing but errors when quiet.
struct Progress {
    bar: Option<ProgressBar>,
    terminal: bool,
    quiet: bool,
    every: LogEvery,
    started: Instant,
    last_line: Instant,
    last_step: usize,
}

impl Progress {
    fn new(run: &RunArgs) -> Self {
        Self {
            bar: None,
            terminal: std::io::stderr().is_terminal(),
            quiet: run.quiet,
            every: run.log_every,
            started: Instant::now(),
            last_line: Instant::now(),
            last_step: 0,
        }
    }

    fn line_due(&self, step: usize) -> bool {
        match self.every {
            LogEvery::Steps(n) => step >= self.last_step + n,
            LogEvery::Every(d) => self.last_line.elapsed() >= d,
        }
    }
}

impl Observer for Progress {
    fn batch(&mut self, p: &BatchProgress) {
        if self.quiet {
            return;
        }
        if self.terminal {
            let bar = self.bar.get_or_insert_with(|| bar(p.batches, "epoch"));
            bar.set_message(format!("epoch {}", p.epoch + 1));
            bar.set_position(p.batch as u64 + 1);
            bar.set_prefix(format!(
                "loss {:.4} acc {:.1}% lr {:.2e} {:.1} img/s",
                p.loss,
                100.0 * p.accuracy,
                p.lr,
                p.images_per_s
            ));
            return;
        }
        if self.line_due(p.step) {
            self.last_line = Instant::now();
            self.last_step = p.step;
            eprintln!(
                "[{:.1}s] epoch {}/{} batch {}/{} step {}/{} loss {:.4} acc {:.1}% lr {:.2e} {:.1} img/s eta {}",
                self.started.elapsed().as_secs_f64(),
                p.epoch + 1,
                p.epochs,
                p.batch + 1,
                p.batches,
                p.step,
                p.total_steps,
                p.loss,
                100.0 * p.accuracy,
                p.lr,
                p.images_per_s,
                clock(p.eta_s)
            );
        }
    }

    fn epoch(&mut self, row: &EpochRow) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.quiet {
            return;
        }
        let val = match (row.val_loss, row.val_acc) {
            (Some(l), Some(a)) => format!(" val loss {l:.4} acc {:.2}%", 100.0 * a),
            _ => String::new(),
        };
        println!(
            "epoch {} step {} lr {:.2e} train loss {:.4} acc {:.2}%{val} {:.1} img/s {:.0} s eta {}",
            row.epoch,
            row.step,
            row.lr,
            row.train_loss,
            100.0 * row.train_acc,
            row.images_per_s,
            row.seconds,
            clock(row.eta_s)
        );
    }

    fn message(&mut self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }
}

/// The training and validation sets of a `--data` root: the Pet download's trainval and
/// test split files, else its `train/` and `val/` folders (each in the course or the
/// ImageFolder layout).
fn split_folders(root: &std::path::Path) -> Result<[PathBuf; 2]> {
    if gaze_data::detect_layout(root)? == gaze_data::Layout::OxfordPets && root.is_dir() {
        let annotations = root.join("annotations");
        return Ok(["trainval.txt", "test.txt"].map(|f| annotations.join(f)));
    }
    let [train, val] = ["train", "val"].map(|f| root.join(f));
    for folder in [&train, &val] {
        if !folder.is_dir() {
            anyhow::bail!(
                "{}: no such folder; --data takes a root with train/ and val/ (course or ImageFolder layout) or the Oxford-IIIT Pet download (images/ + annotations/)",
                folder.display()
            );
        }
    }
    Ok([train, val])
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let mut overrides = args.run.overrides.clone();
    if let Some(data) = &args.data {
        let [train, val] = split_folders(data)?;
        overrides.push(format!("data.train=\"{}\"", train.display()));
        overrides.push(format!("data.val=\"{}\"", val.display()));
    }
    if let Some(init) = &args.init {
        overrides.push("model.init=\"pretrained\"".into());
        overrides.push(format!("model.weights=\"{}\"", init.display()));
    }
    if let Some(precision) = args.precision {
        overrides.push(format!("run.precision=\"{precision}\""));
    }
    let config = TrainConfig::load(&args.run.config, &overrides)?;
    let (out, device, options) = args.run.prepare(args.skip_bad)?;
    let outputs = [
        "best.safetensors",
        "config.json",
        "config.toml",
        "metrics.csv",
        "summary.json",
    ]
    .map(|f| out.join(f));
    crate::outputs::claim(config.model.weights.iter().map(PathBuf::as_path), &outputs)?;
    let mut progress = Progress::new(&args.run);
    let summary = train(&config, &out, &options, &device, &mut progress)?;
    if let Some(acc) = summary.best_val_accuracy.filter(|_| !args.run.quiet) {
        println!(
            "best val accuracy {:.2}% at epoch {} -> {}",
            100.0 * acc,
            summary.best_epoch.unwrap_or(0),
            out.join("best.safetensors").display()
        );
    }
    Ok(())
}

/// Train a CATR-architecture captioner from scratch with teacher forcing, on a
/// `gaze synth --captions` set, from a TOML config (e.g. configs/caption/synth_catr.toml;
/// overrides such as data.dir="runs/scenes").
#[derive(Args)]
pub struct CaptionTrainArgs {
    #[command(flatten)]
    run: RunArgs,
}

pub fn run_caption_train(args: CaptionTrainArgs) -> Result<()> {
    let config = CaptionTrainConfig::load(&args.run.config, &args.run.overrides)?;
    let (out, device, options) = args.run.prepare(false)?;
    let mut progress = Progress::new(&args.run);
    let Some(summary) = train_captioner(&config, &out, &options, &device, &mut progress)? else {
        return Ok(());
    };
    if args.run.quiet {
        return Ok(());
    }
    let v = &summary.val;
    println!(
        "val exact match {:.1}% of {} scenes; pointing {:.1}% of {} words (chance {:.1}%) -> {}",
        100.0 * v.exact_match,
        v.images,
        100.0 * v.pointing_accuracy,
        v.pointed_words,
        100.0 * v.pointing_chance,
        out.join("model.safetensors").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_intervals_parse_as_steps_or_durations() {
        assert_eq!(parse_log_every("50"), Ok(LogEvery::Steps(50)));
        assert_eq!(
            parse_log_every("30s"),
            Ok(LogEvery::Every(Duration::from_secs(30)))
        );
        assert_eq!(
            parse_log_every("2m"),
            Ok(LogEvery::Every(Duration::from_secs(120)))
        );
        assert_eq!(
            parse_log_every("500ms"),
            Ok(LogEvery::Every(Duration::from_millis(500)))
        );
        for bad in ["0", "-1s", "5x", "s", "", "nans"] {
            assert!(parse_log_every(bad).is_err(), "{bad}");
        }
        assert_eq!(
            (clock(7.4), clock(245.0), clock(3725.0)),
            ("7s".into(), "4m05s".into(), "1h02m".into())
        );
    }
}
