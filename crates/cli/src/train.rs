//! `gaze train` and `gaze caption-train`.

use std::io::IsTerminal;
use std::path::PathBuf;

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
    /// Dataset root with train/ and val/ folders (overrides data.train and data.val).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Start from these timm weights (sets model.init = "pretrained").
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Leave unreadable images out (counted in summary.json) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
}

/// An indicatif bar per epoch on a terminal; a plain line per epoch either way.
struct Progress {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Observer for Progress {
    fn batch(&mut self, p: &BatchProgress) {
        if !self.terminal {
            return;
        }
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
    }

    fn epoch(&mut self, row: &EpochRow) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let val = match (row.val_loss, row.val_acc) {
            (Some(l), Some(a)) => format!(" val loss {l:.4} acc {:.2}%", 100.0 * a),
            _ => String::new(),
        };
        println!(
            "epoch {} step {} lr {:.2e} train loss {:.4} acc {:.2}%{val} {:.1} img/s {:.0} s",
            row.epoch,
            row.step,
            row.lr,
            row.train_loss,
            100.0 * row.train_acc,
            row.images_per_s,
            row.seconds
        );
    }

    fn message(&mut self, text: &str) {
        eprintln!("{text}");
    }
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    let mut overrides = args.run.overrides.clone();
    if let Some(data) = &args.data {
        overrides.push(format!("data.train=\"{}\"", data.join("train").display()));
        overrides.push(format!("data.val=\"{}\"", data.join("val").display()));
    }
    if let Some(init) = &args.init {
        overrides.push("model.init=\"pretrained\"".into());
        overrides.push(format!("model.weights=\"{}\"", init.display()));
    }
    let config = TrainConfig::load(&args.run.config, &overrides)?;
    let (out, device, options) = args.run.prepare(args.skip_bad)?;
    let outputs = ["best.safetensors", "config.toml", "metrics.csv", "summary.json"].map(|f| out.join(f));
    crate::outputs::claim(config.model.weights.iter().map(PathBuf::as_path), &outputs)?;
    let mut progress = Progress {
        bar: None,
        terminal: std::io::stderr().is_terminal(),
    };
    let summary = train(&config, &out, &options, &device, &mut progress)?;
    if let Some(acc) = summary.best_val_accuracy {
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
    let mut progress = Progress {
        bar: None,
        terminal: std::io::stderr().is_terminal(),
    };
    let Some(summary) = train_captioner(&config, &out, &options, &device, &mut progress)? else {
        return Ok(());
    };
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
