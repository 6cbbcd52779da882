//! `cargo xtask reproduce`: every result of the assignment, as a chain of `gaze` commands.
//!
//! Each step names its inputs and outputs and is skipped when every output exists and is
//! newer than every input, so an interrupted run picks up where it stopped and a second run
//! does no work. Without `--data` it runs on a synthetic set on the CPU; with the real data
//! and weights it runs the course recipe.

mod captions;
mod classification;
mod report;
mod runner;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use classification::Classification;
use report::{Section, write_report};
use runner::Runner;

#[derive(Args)]
pub struct ReproduceArgs {
    /// Course data root holding p1_data/{train,val} and p2_data/images (omit for the
    /// built-in synthetic run).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// timm vit_small_patch16_384 weights (.safetensors or .pth), with --data.
    #[arg(long, value_name = "FILE", requires = "data")]
    vit_weights: Option<PathBuf>,
    /// CATR checkpoint, with --data.
    #[arg(long, value_name = "FILE", requires = "vocab")]
    catr_weights: Option<PathBuf>,
    /// BERT uncased vocab.txt, with --catr-weights.
    #[arg(long, value_name = "FILE")]
    vocab: Option<PathBuf>,
    /// Backend feature gaze is built with: cpu (flex), tch or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "tch", "cuda"])]
    backend: String,
    /// Python whose torch 2.9.0 the `tch` backend builds and runs against.
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Device for every gaze step (e.g. tch-cuda to run the tch build on a GPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder.
    #[arg(long, default_value = "runs/reproduce", value_name = "DIR")]
    out: PathBuf,
    /// Build gaze with the release profile (the default dev profile already optimises the
    /// dependencies, where the numeric work is, and reuses the test build).
    #[arg(long)]
    release: bool,
}

/// `summary.json`: the headline numbers of a reproduction.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Top-1 accuracy of the trained ViT on the validation images.
    #[serde(skip_serializing_if = "Option::is_none")]
    vit_val_accuracy: Option<f64>,
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

pub fn reproduce(root: &Path, args: ReproduceArgs) -> Result<()> {
    let build_started = Instant::now();
    let out = root.join(&args.out);
    std::fs::create_dir_all(&out)?;
    let env = if args.backend == "tch" {
        crate::libtorch_env(&args.python)?
    } else {
        Vec::new()
    };
    let gaze = build_gaze(root, &args.backend, args.release, &env)?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    // `seconds` is the run after the build.
    let started = Instant::now();
    let mut r = Runner {
        gaze,
        env,
        device: args.device.clone(),
        done: 0,
        skipped: 0,
    };
    let mut summary = Summary::default();
    let classification = Classification {
        root,
        out: &out,
        data: args.data.as_deref(),
        vit_weights: args.vit_weights.as_deref(),
    };
    let mut sections: Vec<Section> = classification.run(&mut r, &mut summary)?;
    let synthetic = args.data.is_none();
    sections.push(match (&args.data, &args.catr_weights, &args.vocab) {
        (Some(d), Some(weights), Some(vocab)) => {
            captions::published(&mut r, &out, &d.join("p2_data/images"), weights, vocab)?
        }
        _ if synthetic => captions::synthetic(root, &out, &mut r, &mut summary)?,
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
    let title = if synthetic {
        "gaze reproduction (synthetic data)"
    } else {
        "gaze reproduction"
    };
    write_report(&out, title, &sections)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

fn build_gaze(root: &Path, backend: &str, release: bool, env: &[(String, String)]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["build", "-p", "gaze-cli"])
        .envs(env.iter().cloned());
    if release {
        cmd.arg("--release");
    }
    match backend {
        "tch" => {
            cmd.args(["--no-default-features", "--features", "tch"]);
        }
        "cuda" => {
            cmd.args(["--no-default-features", "--features", "cuda"]);
        }
        _ => {}
    }
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
