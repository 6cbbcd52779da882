//! `gaze train`, `gaze synth`, `gaze caption-train` and `gaze compare`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use gaze_caption::train::{CaptionTrainConfig, train_captioner};
use gaze_data::scenes::{SceneSetConfig, write_scene_set};
use gaze_data::synth::{SynthConfig, write_synth};
use gaze_vit::parse_device;
use gaze_vit::train::{BatchProgress, EpochRow, Observer, RunOptions, TrainConfig, train};
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
    /// The run folder (refusing a used one without --resume), the device and the options.
    fn prepare(&self, skip_bad: bool) -> Result<(PathBuf, burn::tensor::Device, RunOptions)> {
        let out = self.out.clone().unwrap_or_else(|| {
            let stem = self
                .config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into());
            PathBuf::from("runs").join(stem)
        });
        if !self.resume && out.join("last").exists() {
            bail!(
                "{}: a run is already there; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
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

/// Write a synthetic classification set in the `{label}_{id}.jpg` layout, or with --captions
/// a synthetic captioning set.
#[derive(Args)]
pub struct SynthArgs {
    /// Output folder (gets train/, val/, classes.txt; boxes.json in each split).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write the captioning set instead: 96x64 scenes of one to three coloured shapes with
    /// captions such as "a red circle left of a blue square" (train/ and val/ with
    /// captions.json, and vocab.txt).
    #[arg(long, conflicts_with_all = ["classes", "size"])]
    captions: bool,
    /// Classes: (colour, shape) pairs, 2 to 18.
    #[arg(long, default_value_t = 6)]
    classes: usize,
    /// Training images [default: 1200, with --captions 4000].
    #[arg(long)]
    train: Option<usize>,
    /// Validation images [default: 300, with --captions 200].
    #[arg(long)]
    val: Option<usize>,
    /// Image side in pixels.
    #[arg(long, default_value_t = 96)]
    size: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run_synth(args: SynthArgs) -> Result<()> {
    if args.captions {
        let defaults = SceneSetConfig::default();
        let config = SceneSetConfig {
            train: args.train.unwrap_or(defaults.train),
            val: args.val.unwrap_or(defaults.val),
            seed: args.seed,
        };
        write_scene_set(&args.out, &config).with_context(|| "could not write the synthetic caption set")?;
        eprintln!(
            "wrote {} + {} captioned scenes to {}",
            config.train,
            config.val,
            args.out.display()
        );
        return Ok(());
    }
    let defaults = SynthConfig::default();
    let config = SynthConfig {
        classes: args.classes,
        train: args.train.unwrap_or(defaults.train),
        val: args.val.unwrap_or(defaults.val),
        size: args.size,
        seed: args.seed,
    };
    write_synth(&args.out, &config).with_context(|| "could not write the synthetic set")?;
    eprintln!(
        "wrote {} + {} images of {} classes to {}",
        config.train,
        config.val,
        config.classes,
        args.out.display()
    );
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

/// Compare finished (or running) runs: a Markdown table and their validation curves.
#[derive(Args)]
pub struct CompareArgs {
    /// Run folders written by `gaze train`.
    #[arg(required = true, num_args = 1.., value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// Where compare.md and val_curves.png go.
    #[arg(long, default_value = "compare", value_name = "DIR")]
    out: PathBuf,
}

fn flatten(prefix: &str, value: &toml::Value, into: &mut std::collections::BTreeMap<String, String>) {
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

struct RunRecord {
    name: String,
    settings: std::collections::BTreeMap<String, String>,
    rows: Vec<(f64, f64)>,
    best: Option<(f64, usize)>,
    seconds: f64,
}

fn read_run(dir: &std::path::Path) -> Result<RunRecord> {
    // Read as plain TOML: ViT runs and captioner runs (`gaze caption-train`) compare alike.
    let path = dir.join("config.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("{}: could not read", path.display()))?;
    let config: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not a run config", path.display()))?;
    let mut settings = std::collections::BTreeMap::new();
    flatten("", &toml::Value::Table(config), &mut settings);
    // Data locations differ between machines, not between settings.
    settings.retain(|k, _| {
        !k.starts_with("data.train") && !k.starts_with("data.val") && k != "data.dir" && k != "model.weights"
    });
    let metrics = dir.join("metrics.csv");
    let text = std::fs::read_to_string(&metrics)
        .with_context(|| format!("{}: could not read", metrics.display()))?;
    let mut rows = Vec::new();
    let mut seconds = 0.0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if let (Some(epoch), Some(acc)) = (
            f.first().and_then(|v| v.parse().ok()),
            f.get(6).and_then(|v| v.parse().ok()),
        ) {
            rows.push((epoch, acc));
        }
        seconds = f.get(8).and_then(|v| v.parse().ok()).unwrap_or(seconds);
    }
    let best = rows
        .iter()
        .cloned()
        .fold(None, |b: Option<(f64, usize)>, (e, a)| match b {
            Some((ba, _)) if ba >= a => b,
            _ => Some((a, e as usize)),
        });
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunRecord {
        name,
        settings,
        rows,
        best,
        seconds,
    })
}

pub fn run_compare(args: CompareArgs) -> Result<()> {
    let runs: Vec<RunRecord> = args.runs.iter().map(|d| read_run(d)).collect::<Result<_>>()?;
    let keys: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.settings.keys()).collect();
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
    for r in &runs {
        md.push_str(&format!("| {} |", r.name));
        for k in &differing {
            md.push_str(&format!(
                " {} |",
                r.settings.get(*k).map(String::as_str).unwrap_or("-")
            ));
        }
        match r.best {
            Some((acc, epoch)) => {
                md.push_str(&format!(" {:.2} % | {epoch} | {:.0} |\n", 100.0 * acc, r.seconds))
            }
            None => md.push_str(&format!(" - | - | {:.0} |\n", r.seconds)),
        }
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: could not create", args.out.display()))?;
    let md_path = args.out.join("compare.md");
    gaze_data::write_atomic(&md_path, md.as_bytes())
        .with_context(|| format!("{}: could not write", md_path.display()))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.rows.iter().map(|&(e, a)| (e, 100.0 * a)).collect(),
            )
        })
        .collect();
    let chart = gaze_viz::figures::line_chart(&series, "Validation accuracy", "epoch", "accuracy (%)");
    let png = args.out.join("val_curves.png");
    gaze_viz::save_png(&chart, &png).with_context(|| format!("{}: could not write", png.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), png.display());
    Ok(())
}
