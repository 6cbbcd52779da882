//! `gaze predict` and `gaze eval`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use gaze_data::display_name;
use gaze_data::{collect_images, labeled_images, write_atomic};
use gaze_nn::checkpoint::LoadError;
use gaze_nn::{argmax, parse_device};
use gaze_records::{Prediction, predictions_csv};
use gaze_vit::{VisionTransformer, VitConfig, classification_metrics, classify_files, load_pretrained};

use crate::outputs::claim_files;
use crate::progress::bar;

/// Where the weights come from and where they run.
#[derive(Args)]
struct ModelArgs {
    /// timm checkpoint (.safetensors or .pth), or one written by `gaze train`.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Architecture preset, e.g. vit_small_patch16_384 [default: the one stored in the
    /// weights by gaze, else vit_small_patch16_384].
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Backend device: auto, flex, ndarray, tch, tch-cuda[:N], cuda[:N], wgpu (those compiled
    /// in; `gaze --version` lists them). auto takes the first of cuda, tch, wgpu, flex, ndarray,
    /// passing over wgpu when its only adapter is a software one (lavapipe).
    #[arg(long, default_value = "auto")]
    device: String,
}

/// [`load_pretrained`], with the advice a command-line user needs when the file does not fit.
pub fn load_classifier(
    weights: &Path,
    model: Option<&str>,
    device: &Device,
) -> Result<(VisionTransformer, VitConfig)> {
    load_pretrained(weights, model, device).map_err(|e| match e {
        LoadError::Mismatch { .. } => {
            anyhow::anyhow!("{e}. Pick the matching --model, or a checkpoint of this model")
        }
        other => other.into(),
    })
}

impl ModelArgs {
    fn load(&self) -> Result<(VisionTransformer, VitConfig, Device)> {
        let device = parse_device(&self.device)?;
        let (model, config) = load_classifier(&self.weights, self.model.as_deref(), &device)?;
        Ok((model, config, device))
    }

    fn logits(&self, paths: &[PathBuf], message: &'static str) -> Result<(Vec<Vec<f32>>, usize)> {
        let (model, config, device) = self.load()?;
        let progress = bar(paths.len(), message);
        let logits = classify_files(
            &model,
            &config.eval_transform(),
            paths,
            self.batch_size as usize,
            &device,
            |n| progress.inc(n as u64),
        )?;
        progress.finish_and_clear();
        if let Some((path, _)) = paths
            .iter()
            .zip(&logits)
            .find(|(_, l)| l.iter().any(|v| !v.is_finite()))
        {
            bail!(
                "{}: the model's outputs for this image are not finite numbers; {} holds weights that are not (NaN or infinite)",
                path.display(),
                self.weights.display()
            );
        }
        Ok((logits, config.num_classes))
    }
}

/// Classify images and write `filename,label` rows (sorted by file name).
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files and/or folders of .jpg/.jpeg/.png images.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Output CSV with header `filename,label`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write `[{"filename", "label", "logits"}]` here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).with_context(|| format!("{}: could not write", path.display()))
}

pub fn predict(args: PredictArgs) -> Result<()> {
    let outputs: Vec<PathBuf> = std::iter::once(&args.out).chain(&args.json).cloned().collect();
    let mut paths = collect_images(&args.images)?;
    paths.sort_by_key(|p| display_name(p));
    let inputs = std::iter::once(&args.model.weights).chain(&paths);
    claim_files(inputs.map(PathBuf::as_path), &outputs)?;
    let (logits, _) = args.model.logits(&paths, "predict")?;
    let predictions: Vec<Prediction> = paths
        .iter()
        .zip(logits)
        .map(|(path, logits)| Prediction {
            filename: display_name(path),
            label: argmax(&logits),
            logits,
        })
        .collect();
    if let Some(json) = &args.json {
        write_output(json, &serde_json::to_vec_pretty(&predictions)?)?;
    }
    write_output(&args.out, &predictions_csv(&predictions))?;
    eprintln!(
        "wrote {} predictions to {}",
        predictions.len(),
        args.out.display()
    );
    Ok(())
}

/// Accuracy of a model on a folder of `{label}_{id}.jpg` images.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder of images named `{label}_{id}.jpg`.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Also write the metrics (top-1/top-5, per-class accuracy, confusion matrix) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let outputs: Vec<PathBuf> = args.json.iter().cloned().collect();
    let images = labeled_images(&args.data)?;
    let paths: Vec<PathBuf> = images.iter().map(|i| i.path.clone()).collect();
    let inputs = std::iter::once(&args.model.weights).chain(&paths);
    claim_files(inputs.map(PathBuf::as_path), &outputs)?;
    let labels: Vec<usize> = images.iter().map(|i| i.label).collect();
    let (logits, num_classes) = args.model.logits(&paths, "eval")?;
    if let Some(bad) = images.iter().find(|i| i.label >= num_classes) {
        bail!(
            "{}: label {} but the model has {num_classes} classes",
            bad.path.display(),
            bad.label
        );
    }
    let metrics = classification_metrics(&logits, &labels, num_classes);
    println!("images  {}", metrics.images);
    println!("top-1   {:.2} %", 100.0 * metrics.top1);
    println!("top-5   {:.2} %", 100.0 * metrics.top5);
    let worst = metrics
        .per_class
        .iter()
        .enumerate()
        .filter_map(|(c, a)| a.map(|a| (c, a)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((class, acc)) = worst {
        println!("weakest class {class}: {:.2} %", 100.0 * acc);
    }
    if let Some(json) = &args.json {
        write_output(json, &serde_json::to_vec_pretty(&metrics)?)?;
    }
    Ok(())
}
