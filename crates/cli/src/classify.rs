//! `gaze predict` and `gaze eval`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use gaze_data::display_name;
use gaze_data::{collect_images, read_labeled_set, write_atomic};
use gaze_nn::checkpoint::LoadError;
use gaze_nn::ops::Precision;
use gaze_nn::{argmax, parse_device};
use gaze_records::{Prediction, RankedClass, predictions_csv};
use gaze_vit::{
    VisionTransformer, VitConfig, classification_metrics, classify_files, load_pretrained, top_classes,
};

use crate::outputs::claim_files;
use crate::progress::bar;

/// The weights and how to read them: shared by every command that loads a classifier.
#[derive(Args)]
pub struct WeightsArgs {
    /// timm checkpoint (.safetensors or .pth), or one written by `gaze train`.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// timm model name: an architecture (vit_small_patch16_384) or name.tag
    /// (vit_small_patch16_384.augreg_in21k_ft_in1k) [default: the architecture stored in the
    /// weights by gaze, else the config.json beside them, else vit_small_patch16_384].
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// timm config.json (architecture, model_args, num_classes, label_names, pretrained_cfg)
    /// [default: the one beside the weights, as in a Hub folder].
    #[arg(long, value_name = "FILE", conflicts_with = "model")]
    pub model_config: Option<PathBuf>,
}

impl WeightsArgs {
    /// The files this reads.
    pub fn inputs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.weights.as_path()).chain(self.model_config.as_deref())
    }

    /// Claims the weights, the config and `images` as inputs and `outputs` as the command's
    /// output files ([`claim_files`]).
    fn claim(&self, images: &[PathBuf], outputs: &[PathBuf]) -> Result<()> {
        claim_files(self.inputs().chain(images.iter().map(PathBuf::as_path)), outputs)
    }

    /// [`load_pretrained`], with the advice a command-line user needs when the file does not
    /// fit.
    pub fn load(&self, device: &Device) -> Result<(VisionTransformer, VitConfig)> {
        load_pretrained(
            &self.weights,
            self.model.as_deref(),
            self.model_config.as_deref(),
            device,
        )
        .map_err(|e| match e {
            LoadError::Mismatch { .. } => {
                anyhow::anyhow!("{e}. Pick the matching --model, or a checkpoint of this model")
            }
            other => other.into(),
        })
    }
}

/// How a loaded classifier's matrix products run.
#[derive(Args)]
pub struct PrecisionArgs {
    /// fp32, or bf16: products of operands rounded to bf16 with f32 accumulation (AVX512_BF16
    /// where the CPU has it, else emulated and slower than fp32; the flex device only).
    #[arg(long, default_value = "fp32", value_name = "fp32|bf16")]
    pub precision: Precision,
}

impl PrecisionArgs {
    /// Loads `source` onto `device` with its products at this precision, refusing a device
    /// that cannot run it before reading anything; prints the precision's one-line notice.
    pub fn load(&self, source: &WeightsArgs, device: &Device) -> Result<(VisionTransformer, VitConfig)> {
        if let Some(notice) = self.precision.prepare(device).map_err(anyhow::Error::msg)? {
            eprintln!("{notice}");
        }
        let (model, config) = source.load(device)?;
        Ok((model.with_precision(self.precision), config))
    }
}

/// Where the weights come from and where they run.
#[derive(Args)]
struct ModelArgs {
    #[command(flatten)]
    source: WeightsArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Backend device: auto, flex, ndarray, tch, tch-cuda[:N], cuda[:N], wgpu (those compiled
    /// in; `gaze --version` lists them). auto takes the first of cuda, tch, wgpu, flex, ndarray,
    /// passing over wgpu when its only adapter is a software one (lavapipe).
    #[arg(long, default_value = "auto")]
    device: String,
}

impl ModelArgs {
    fn load(&self) -> Result<(VisionTransformer, VitConfig, Device)> {
        let device = parse_device(&self.device)?;
        let (model, config) = self.precision.load(&self.source, &device)?;
        Ok((model, config, device))
    }

    /// Logits of every image in `paths` by `classifier` (from [`Self::load`]).
    fn logits(
        &self,
        (model, config, device): &(VisionTransformer, VitConfig, Device),
        paths: &[PathBuf],
        message: &'static str,
    ) -> Result<Vec<Vec<f32>>> {
        let progress = bar(paths.len(), message);
        let logits = classify_files(
            model,
            &config.eval_transform(),
            paths,
            self.batch_size as usize,
            device,
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
                self.source.weights.display()
            );
        }
        Ok(logits)
    }
}

/// Classify images and write `filename,label` rows (sorted by file name).
#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files and/or folders of .jpg/.jpeg/.png images (any case).
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Output CSV with header `filename,label` (the columns the options below add follow).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write `[{"filename", "label", ..., "logits"}]` here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Add the class name (`name`), from the names the checkpoint carries (a gaze run on
    /// named classes, or a timm config.json's label_names).
    #[arg(long)]
    with_names: bool,
    /// Add the predicted class's softmax probability (`probability`).
    #[arg(long)]
    probabilities: bool,
    /// Add the K most probable classes: CSV columns top1_label, top1_probability, ...
    /// (and top1_name with --with-names), JSON `top_k`.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    top_k: Option<u32>,
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).with_context(|| format!("{}: could not write", path.display()))
}

pub fn predict(args: PredictArgs) -> Result<()> {
    let outputs: Vec<PathBuf> = std::iter::once(&args.out).chain(&args.json).cloned().collect();
    let mut paths = collect_images(&args.images)?;
    paths.sort_by_key(|p| display_name(p));
    args.model.source.claim(&paths, &outputs)?;
    let classifier = args.model.load()?;
    let config = &classifier.1;
    if args.with_names && config.label_names.is_none() {
        bail!(
            "{}: --with-names, but the checkpoint carries no class names; train on named classes (ImageFolder or Pet layout), or use a checkpoint whose config.json has label_names",
            args.model.source.weights.display()
        );
    }
    let logits = args.model.logits(&classifier, &paths, "predict")?;
    let k = args.top_k.unwrap_or(0) as usize;
    let name = |label: usize| args.with_names.then(|| config.class_name(label));
    let predictions: Vec<Prediction> = paths
        .iter()
        .zip(logits)
        .map(|(path, logits)| {
            let ranked = top_classes(&logits, k.max(1));
            let label = argmax(&logits);
            Prediction {
                filename: display_name(path),
                label,
                name: name(label),
                probability: args.probabilities.then_some(ranked[0].1),
                top_k: (k > 0).then(|| {
                    ranked
                        .iter()
                        .map(|&(label, probability)| RankedClass {
                            label,
                            name: name(label),
                            probability,
                        })
                        .collect()
                }),
                logits,
            }
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

/// Accuracy of a model on a labelled dataset.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Labelled images: a folder in the course layout ({label}_{id}.jpg) or the ImageFolder
    /// one (a folder per class; classes matched to the model's by name when it has names),
    /// or the Oxford-IIIT Pet download (images/ + annotations/) or one of its split files.
    #[arg(long, value_name = "PATH")]
    data: PathBuf,
    /// The Oxford-IIIT Pet split to evaluate: trainval, test or list [default: test].
    #[arg(long, value_name = "NAME")]
    split: Option<String>,
    /// Also write the metrics (top-1/top-5, per-class accuracy, confusion matrix) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let outputs: Vec<PathBuf> = args.json.iter().cloned().collect();
    let mut set = read_labeled_set(&args.data, args.split.as_deref(), "test")?;
    let paths: Vec<PathBuf> = set.images.iter().map(|i| i.path.clone()).collect();
    args.model.source.claim(&paths, &outputs)?;
    eprintln!("{} images, {}", set.images.len(), set.layout.describe());
    let classifier = args.model.load()?;
    let config = &classifier.1;
    let logits = args.model.logits(&classifier, &paths, "eval")?;
    if let Some(names) = &config.label_names {
        set.map_to(names, &args.data)?;
    }
    let num_classes = config.num_classes;
    if let Some(bad) = set.images.iter().find(|i| i.label >= num_classes) {
        bail!(
            "{}: label {} but the model has {num_classes} classes",
            bad.path.display(),
            bad.label
        );
    }
    let labels: Vec<usize> = set.images.iter().map(|i| i.label).collect();
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
        println!("weakest class {}: {:.2} %", config.class_name(class), 100.0 * acc);
    }
    if let Some(json) = &args.json {
        write_output(json, &serde_json::to_vec_pretty(&metrics)?)?;
    }
    Ok(())
}
