//! `cargo xtask reproduce`: every result of the assignment, as a chain of `gaze` commands.
//!
//! Three modes, each in its own folder under `--out`: `synthetic` (the default: a built-in
//! set on the CPU), `real` (`--data`: the course recipe from `--vit-weights`, and captions
//! with `--catr-weights`), and `captions` (`--catr-weights` without `--data`: captions of
//! `--captions DIR`); `--quick` shrinks the synthetic run to a check that every step runs
//! (`synthetic-quick`). A folder made by one mode, or with other data or weights, is refused
//! by another unless `--fresh` clears it. Steps are stamped ([`runner`]): a second run with
//! the same command and inputs does no work.

mod ablations;
mod captions;
mod classification;
mod report;
mod runner;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use classification::Classification;
use report::{Section, write_report};
use runner::Runner;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Course data root holding p1_data/{train,val} and p2_data/images (omit for the
    /// built-in synthetic run).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// timm vit_small_patch16_384 weights (.safetensors or .pth), with --data.
    #[arg(long, value_name = "FILE", requires = "data")]
    vit_weights: Option<PathBuf>,
    /// timm vit_base_patch16_384 weights for the ViT-B ablation, with --ablations.
    #[arg(long, value_name = "FILE", requires = "ablations")]
    vit_b_weights: Option<PathBuf>,
    /// CATR checkpoint: captions of p2_data/images with --data, else of --captions.
    #[arg(long, value_name = "FILE", requires = "vocab")]
    catr_weights: Option<PathBuf>,
    /// BERT uncased vocab.txt, with --catr-weights.
    #[arg(long, value_name = "FILE", requires = "catr_weights")]
    vocab: Option<PathBuf>,
    /// CATR architecture as JSON, for a checkpoint that is not the published v3 model.
    #[arg(long, value_name = "FILE", requires = "catr_weights")]
    catr_arch: Option<PathBuf>,
    /// Images to caption [default with --data: DIR/p2_data/images].
    #[arg(long, value_name = "DIR", requires = "catr_weights")]
    captions: Option<PathBuf>,
    /// Override of the classification training config, e.g. --set schedule.epochs=1
    /// (repeatable; ablations get it too).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Also train configs/ablations/* (scratch init, Adam at 1e-2, SGD at 1e-4 and 1e-3; ViT-B
    /// with --vit-b-weights) and compare them with the recipe.
    #[arg(long, requires = "data")]
    ablations: bool,
    /// Clear the mode's folder first: needed after changing the data, the weights or a
    /// training setting.
    #[arg(long)]
    fresh: bool,
    /// Cargo feature gaze is built with: flex (the CPU default), tch, wgpu or cuda.
    #[arg(long, default_value = "flex", value_parser = ["flex", "tch", "wgpu", "cuda"])]
    backend: String,
    /// Python whose torch 2.9.0 the `tch` backend builds and runs against.
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Device for every gaze step [auto: the backend's own, e.g. tch; tch-cuda runs the tch
    /// build on a GPU].
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output root: the run goes to its mode's folder inside (synthetic, real or captions).
    #[arg(long, default_value = "runs/reproduce", value_name = "DIR")]
    out: PathBuf,
    /// Build gaze with the release profile (the default dev profile already optimises the
    /// dependencies, where the numeric work is, and reuses the test build).
    #[arg(long)]
    release: bool,
    /// Use this gaze binary instead of building one (built with --backend).
    #[arg(long, value_name = "BIN")]
    gaze: Option<PathBuf>,
    /// A short synthetic run that checks every step works on a backend (e.g. --backend wgpu
    /// on a software Vulkan device): 96 + 24 images, 64 + 8 scenes, one epoch per training,
    /// into the synthetic-quick folder. Its accuracies mean nothing.
    #[arg(long, conflicts_with_all = ["data", "catr_weights"])]
    quick: bool,
}

/// `--quick`'s schedule for every training, before the `--set` overrides.
pub const QUICK_SCHEDULE: [&str; 2] = ["schedule.epochs=1", "schedule.warmup_steps=1"];
/// `--quick`'s classification set: training and validation images (`gaze synth`).
pub const QUICK_IMAGES: [&str; 4] = ["--train", "96", "--val", "24"];
/// `--quick`'s caption set: training and validation scenes, at least the five shown.
pub const QUICK_SCENES: [&str; 4] = ["--train", "64", "--val", "8"];

/// Parses `argv` (the arguments after `reproduce`) and reproduces, in the workspace `root`.
pub fn reproduce_from(root: &Path, argv: &[&str]) -> Result<()> {
    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: ReproduceArgs,
    }
    let parsed = Command::try_parse_from(std::iter::once("reproduce").chain(argv.iter().copied()))?;
    reproduce(root, parsed.args)
}

/// Which results a reproduction makes, and its folder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Synthetic,
    Real,
    Captions,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Synthetic => "synthetic",
            Mode::Real => "real",
            Mode::Captions => "captions",
        }
    }
}

/// What made a mode's folder (`mode.json`): another mode, data or weights is refused.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Origin {
    mode: Mode,
    data: Option<PathBuf>,
    vit_weights: Option<PathBuf>,
    vit_b_weights: Option<PathBuf>,
    catr_weights: Option<PathBuf>,
    vocab: Option<PathBuf>,
    catr_arch: Option<PathBuf>,
    captions: Option<PathBuf>,
    #[serde(default)]
    quick: bool,
}

impl Origin {
    /// The mode's folder name.
    fn folder(&self) -> String {
        if self.quick {
            format!("{}-quick", self.mode.name())
        } else {
            self.mode.name().to_string()
        }
    }
}

/// One of the three named validation images: its true and predicted class.
#[derive(Debug, Clone, Serialize)]
pub struct NamedImage {
    pub name: String,
    pub label: usize,
    pub predicted: usize,
    pub probability: f32,
}

/// One captioned image.
#[derive(Debug, Clone, Serialize)]
pub struct Captioned {
    pub file: String,
    pub caption: String,
}

/// `summary.json`: the headline numbers of a reproduction.
#[derive(Debug, Serialize)]
pub struct Summary {
    mode: Mode,
    /// `--quick`: small sets and one epoch, so the accuracies mean nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    quick: bool,
    /// Top-1 accuracy of the trained ViT on the validation images.
    #[serde(skip_serializing_if = "Option::is_none")]
    vit_val_accuracy: Option<f64>,
    /// The three images whose [class] attention is drawn.
    named_images: Vec<NamedImage>,
    /// Every captioned image.
    captions: Vec<Captioned>,
    /// Synthetic data: the mean share of the [class] attention inside the object's box.
    #[serde(skip_serializing_if = "Option::is_none")]
    attention_in_box_share: Option<f64>,
    /// Synthetic data: the mean share of the image the box covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    box_area_share: Option<f64>,
    /// Synthetic captions: the share of held-out scenes captioned exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    caption_exact_match: Option<f64>,
    /// Synthetic captions: how often a colour or shape word's attention peak lies on its object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pointing_accuracy: Option<f64>,
    /// The same for a random cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pointing_chance: Option<f64>,
    /// Seconds after the build.
    seconds: f64,
    build_seconds: f64,
    steps_run: usize,
    steps_skipped: usize,
}

impl Summary {
    fn new(mode: Mode, quick: bool) -> Self {
        Self {
            mode,
            quick,
            vit_val_accuracy: None,
            named_images: Vec::new(),
            captions: Vec::new(),
            attention_in_box_share: None,
            box_area_share: None,
            caption_exact_match: None,
            pointing_accuracy: None,
            pointing_chance: None,
            seconds: 0.0,
            build_seconds: 0.0,
            steps_run: 0,
            steps_skipped: 0,
        }
    }
}

/// The course's reference accuracy and the band a reproduction should land in.
pub const REFERENCE_ACCURACY: f64 = 0.9467;
pub const REPRODUCTION_BAND: f64 = 0.005;

fn absolute(path: &Option<PathBuf>) -> Result<Option<PathBuf>> {
    path.as_ref()
        .map(|p| std::fs::canonicalize(p).with_context(|| format!("{}: not found", p.display())))
        .transpose()
}

/// Takes the mode's folder under `root`: refuses one made by another mode or other inputs
/// unless `fresh`, which clears it.
fn mode_folder(root: &Path, origin: &Origin, fresh: bool) -> Result<PathBuf> {
    let dir = root.join(origin.folder());
    let marker = dir.join("mode.json");
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("{}: could not clear", dir.display()))?;
    }
    if let Ok(bytes) = std::fs::read(&marker) {
        let earlier: Option<Origin> = serde_json::from_slice(&bytes).ok();
        if earlier.as_ref() != Some(origin) {
            bail!(
                "{}: made by another reproduction ({}); pass --fresh to clear it, or choose another --out",
                dir.display(),
                String::from_utf8_lossy(&bytes)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    } else if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{}: holds files but no mode.json; pass --fresh to clear it, or choose another --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    gaze_data::write_atomic(&marker, &serde_json::to_vec_pretty(origin)?)?;
    Ok(dir)
}

pub fn reproduce(root: &Path, args: ReproduceArgs) -> Result<()> {
    let mode = match (&args.data, &args.catr_weights) {
        (Some(_), _) => Mode::Real,
        (None, Some(_)) => Mode::Captions,
        (None, None) => Mode::Synthetic,
    };
    let captions_dir = match (&args.captions, &args.data) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(data)) if args.catr_weights.is_some() => Some(data.join("p2_data/images")),
        (None, None) if mode == Mode::Captions => {
            bail!("--catr-weights without --data captions the images of --captions DIR; pass it")
        }
        _ => None,
    };
    let origin = Origin {
        mode,
        data: absolute(&args.data)?,
        vit_weights: absolute(&args.vit_weights)?,
        vit_b_weights: absolute(&args.vit_b_weights)?,
        catr_weights: absolute(&args.catr_weights)?,
        vocab: absolute(&args.vocab)?,
        catr_arch: absolute(&args.catr_arch)?,
        captions: absolute(&captions_dir)?,
        quick: args.quick,
    };
    let out = mode_folder(&root.join(&args.out), &origin, args.fresh)?;
    let build_started = Instant::now();
    let env = if args.backend == "tch" {
        crate::libtorch_env(&args.python)?
    } else {
        Vec::new()
    };
    let gaze = match &args.gaze {
        Some(bin) => bin.clone(),
        None => build_gaze(root, &args.backend, args.release, &env)?,
    };
    let build_seconds = build_started.elapsed().as_secs_f64();
    // `seconds` is the run after the build.
    let started = Instant::now();
    // The binary may hold more backends than the one asked for; each backend's name is its
    // device's.
    let device = if args.device == "auto" {
        &args.backend
    } else {
        &args.device
    };
    let mut r = Runner::new(gaze, env, device, &args.backend, out.join("stamps"))?;
    let mut summary = Summary::new(mode, args.quick);
    let overrides: Vec<String> = if args.quick {
        QUICK_SCHEDULE.iter().map(|s| s.to_string()).collect()
    } else {
        Vec::new()
    };
    let overrides = [overrides, args.overrides.clone()].concat();
    let mut sections: Vec<Section> = Vec::new();
    if mode != Mode::Captions {
        let classification = Classification {
            root,
            out: &out,
            data: origin.data.as_deref(),
            vit_weights: origin.vit_weights.as_deref(),
            overrides: &overrides,
            quick: args.quick,
        };
        let recipe = classification.run(&mut r, &mut summary, &mut sections)?;
        if mode == Mode::Synthetic || args.ablations {
            sections.push(ablations::run(
                &classification,
                &recipe,
                origin.vit_b_weights.as_deref(),
                &mut r,
            )?);
        }
    }
    let catr = origin.catr_weights.as_deref().zip(origin.vocab.as_deref());
    sections.push(match (catr, &origin.captions) {
        (Some((weights, vocab)), Some(images)) => {
            let model = captions::Model {
                weights,
                vocab,
                arch: origin.catr_arch.as_deref(),
            };
            captions::published(&mut r, &out, images, &model, &mut summary)?
        }
        _ if mode == Mode::Synthetic => captions::synthetic(root, &out, args.quick, &mut r, &mut summary)?,
        _ => Section::new(
            "Caption attention",
            "Not run: pass --catr-weights and --vocab (see `cargo xtask fetch`).",
            vec![],
        ),
    });
    summary.seconds = started.elapsed().as_secs_f64();
    summary.build_seconds = build_seconds;
    summary.steps_run = r.done;
    summary.steps_skipped = r.skipped;
    gaze_data::write_atomic(&out.join("summary.json"), &serde_json::to_vec_pretty(&summary)?)?;
    let title = match mode {
        Mode::Synthetic if args.quick => "gaze reproduction (synthetic data, quick check)",
        Mode::Synthetic => "gaze reproduction (synthetic data)",
        Mode::Real => "gaze reproduction",
        Mode::Captions => "gaze captions",
    };
    write_report(&out, title, &summary_rows(&summary), &sections)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

/// The table at the top of the report.
fn summary_rows(summary: &Summary) -> Vec<(String, String)> {
    let mode = if summary.quick {
        format!(
            "{} (--quick: small sets, one epoch; the accuracies mean nothing)",
            summary.mode.name()
        )
    } else {
        summary.mode.name().to_string()
    };
    let mut rows = vec![("mode".to_string(), mode)];
    if let Some(acc) = summary.vit_val_accuracy {
        let band = if summary.mode == Mode::Real {
            let inside = (acc - REFERENCE_ACCURACY).abs() <= REPRODUCTION_BAND;
            format!(
                " (reference {:.2} % ± {:.1}: {})",
                100.0 * REFERENCE_ACCURACY,
                100.0 * REPRODUCTION_BAND,
                if inside { "reproduced" } else { "outside the band" }
            )
        } else {
            String::new()
        };
        rows.push((
            "ViT validation accuracy".into(),
            format!("{:.2} %{band}", 100.0 * acc),
        ));
    }
    if !summary.named_images.is_empty() {
        let correct = summary
            .named_images
            .iter()
            .filter(|i| i.label == i.predicted)
            .count();
        rows.push((
            "named images classified correctly".into(),
            format!("{correct} of {}", summary.named_images.len()),
        ));
    }
    if !summary.captions.is_empty() {
        rows.push(("images captioned".into(), summary.captions.len().to_string()));
    }
    if let Some(exact) = summary.caption_exact_match {
        rows.push(("captions exactly right".into(), format!("{:.1} %", 100.0 * exact)));
    }
    rows.push((
        "steps run, skipped".into(),
        format!("{}, {}", summary.steps_run, summary.steps_skipped),
    ));
    rows.push(("seconds".into(), format!("{:.0}", summary.seconds)));
    rows
}

fn build_gaze(root: &Path, backend: &str, release: bool, env: &[(String, String)]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "-p", "gaze-cli"])
        .envs(env.iter().cloned());
    if release {
        cmd.arg("--release");
    }
    cmd.args([
        "--no-default-features",
        "--features",
        crate::backend_features(backend),
    ]);
    println!("building gaze ({backend}): {cmd:?}");
    if !cmd.status().context("could not run cargo")?.success() {
        bail!("building gaze failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("gaze"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(mode: Mode, data: Option<&str>) -> Origin {
        Origin {
            mode,
            data: data.map(PathBuf::from),
            vit_weights: None,
            vit_b_weights: None,
            catr_weights: None,
            vocab: None,
            catr_arch: None,
            captions: None,
            quick: false,
        }
    }

    #[test]
    fn modes_keep_their_folders_and_other_inputs_need_fresh() {
        let root = std::env::temp_dir().join(format!("xtask-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let synthetic = mode_folder(&root, &origin(Mode::Synthetic, None), false).unwrap();
        let real = mode_folder(&root, &origin(Mode::Real, Some("/data/a")), false).unwrap();
        assert_eq!(synthetic, root.join("synthetic"));
        assert_eq!(real, root.join("real"));
        std::fs::write(real.join("result"), b"a").unwrap();
        // The same inputs again: the folder is kept.
        mode_folder(&root, &origin(Mode::Real, Some("/data/a")), false).unwrap();
        assert!(real.join("result").exists());
        // Other data: refused, naming the folder, unless --fresh, which clears it.
        let err = mode_folder(&root, &origin(Mode::Real, Some("/data/b")), false).unwrap_err();
        assert!(
            err.to_string().contains("--fresh") && err.to_string().contains("real"),
            "{err}"
        );
        assert!(real.join("result").exists());
        mode_folder(&root, &origin(Mode::Real, Some("/data/b")), true).unwrap();
        assert!(!real.join("result").exists());
        assert!(synthetic.join("mode.json").exists());
        // --quick has a folder of its own, so it never mixes with a full run's results.
        let quick = Origin {
            quick: true,
            ..origin(Mode::Synthetic, None)
        };
        assert_eq!(
            mode_folder(&root, &quick, false).unwrap(),
            root.join("synthetic-quick")
        );
        mode_folder(&root, &origin(Mode::Synthetic, None), false).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
