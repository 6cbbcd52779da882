//! `gaze posembed` and `gaze attention`: the figures of where the ViT looks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gaze_data::{collect_images, ensure_readable, figure_stems, load_rgb, write_atomic, write_npy};
use gaze_nn::parse_device;
use gaze_vit::explain;

use crate::classify::{PrecisionArgs, WeightsArgs};
use gaze_records::AttentionRecord;
use gaze_viz::analysis::{ClsMaps, HeadFusion, cls_maps, cosine_similarity_matrix};
use gaze_viz::figures::{Region, attention_figure, posembed_figure};
use gaze_viz::{Colormap, save_png};
use serde::Serialize;

use crate::outputs::{claim, claim_files, figure_files};
use crate::progress::bar;

#[derive(Clone, Copy, ValueEnum)]
enum Cmap {
    Viridis,
    Jet,
}

impl From<Cmap> for Colormap {
    fn from(c: Cmap) -> Self {
        match c {
            Cmap::Viridis => Colormap::Viridis,
            Cmap::Jet => Colormap::Jet,
        }
    }
}

/// Cosine similarity of the patch position embeddings (ViT paper, Fig. 7).
#[derive(Args)]
pub struct PosembedArgs {
    #[command(flatten)]
    source: WeightsArgs,
    /// Output PNG: a grid of maps, one per patch position, with a shared colorbar.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the full N x N float32 similarity matrix (N patches) as .npy.
    #[arg(long, value_name = "FILE")]
    npy: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "viridis")]
    colormap: Cmap,
}

pub fn posembed(args: PosembedArgs) -> Result<()> {
    let outputs: Vec<PathBuf> = std::iter::once(&args.out).chain(&args.npy).cloned().collect();
    claim_files(args.source.inputs(), &outputs)?;
    let device = parse_device("auto")?;
    let (model, config) = args.source.load(&device)?;
    let similarity = cosine_similarity_matrix(model.patch_pos_embed().view());
    let [gh, gw] = config.grid();
    let figure = posembed_figure(similarity.view(), (gh, gw), args.colormap.into());
    if let Some(npy) = &args.npy {
        write_npy(npy, similarity.view()).with_context(|| format!("{}: could not write", npy.display()))?;
    }
    save_png(&figure, &args.out).with_context(|| format!("{}: could not write", args.out.display()))?;
    eprintln!("wrote {} ({gh}x{gw} grid of {gh}x{gw} maps)", args.out.display());
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Heads {
    Mean,
    Max,
    /// The mean map, then one panel per head.
    All,
}

/// Where the [class] token looks: attention over each image.
#[derive(Args)]
pub struct AttentionArgs {
    #[command(flatten)]
    source: WeightsArgs,
    #[command(flatten)]
    precision: PrecisionArgs,
    /// Image files and/or folders.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Output folder; gets <stem>.png per image (and <stem>.json with --json); where two
    /// images share a stem, each is named by its whole file name (a.jpg.png, a.png.png).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also write <stem>.json: grid, cls_attention (row-major), label, probability.
    #[arg(long)]
    json: bool,
    /// Block whose attention is drawn, 0-based [default: the last].
    #[arg(long)]
    layer: Option<usize>,
    /// How heads are combined.
    #[arg(long, value_enum, default_value = "mean")]
    heads: Heads,
    /// Attention rollout through all blocks (Abnar & Zuidema 2020) instead of one block.
    #[arg(long)]
    rollout: bool,
    /// With --rollout: fraction of the weakest attention weights dropped per block.
    #[arg(long, default_value_t = 0.0, requires = "rollout")]
    discard_ratio: f32,
    /// Text file with one class name per line, to title figures with names [default: the
    /// names the checkpoint carries, if any].
    #[arg(long, value_name = "FILE")]
    class_names: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "viridis")]
    colormap: Cmap,
    /// Backend device (see `gaze predict --help`).
    #[arg(long, default_value = "auto")]
    device: String,
}

/// Writes `DIR/<stem>.png`, and `DIR/<stem>.json` when given, each atomically (the
/// command has [`claim`]ed them).
pub fn write_figure(
    dir: &Path,
    stem: &str,
    figure: &gaze_data::image::RgbImage,
    json: Option<&impl Serialize>,
) -> Result<()> {
    if let Some(json) = json {
        let file = dir.join(format!("{stem}.json"));
        write_atomic(&file, &serde_json::to_vec_pretty(json)?)
            .with_context(|| format!("{}: could not write", file.display()))?;
    }
    let file = dir.join(format!("{stem}.png"));
    save_png(figure, &file).with_context(|| format!("{}: could not write", file.display()))
}

fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: could not read", path.display()))?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

pub fn attention(args: AttentionArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.discard_ratio) {
        bail!("--discard-ratio must be in [0, 1), got {}", args.discard_ratio);
    }
    let paths = collect_images(&args.images)?;
    let stems = figure_stems(&paths)?;
    let inputs = args
        .source
        .inputs()
        .chain(args.class_names.as_deref())
        .chain(paths.iter().map(PathBuf::as_path));
    claim(inputs, &figure_files(&args.out, &stems, args.json))?;
    ensure_readable(&paths)?;
    let names = args.class_names.as_deref().map(read_class_names).transpose()?;
    let device = parse_device(&args.device)?;
    let (model, config) = args.precision.load(&args.source, &device)?;
    let names = names.or_else(|| config.label_names.clone());
    if let Some(names) = &names
        && names.len() != config.num_classes
    {
        bail!(
            "{}: {} class names for a model with {} classes",
            args.class_names.as_ref().unwrap().display(),
            names.len(),
            config.num_classes
        );
    }
    let layer = args.layer.unwrap_or(config.depth - 1);
    if layer >= config.depth {
        bail!(
            "--layer {layer} does not exist: the model has blocks 0..{}",
            config.depth - 1
        );
    }
    let fusion = match args.heads {
        Heads::Max => HeadFusion::Max,
        _ => HeadFusion::Mean,
    };
    let which = match (args.rollout, args.heads) {
        (true, _) => ClsMaps::Rollout {
            fusion,
            discard_ratio: args.discard_ratio,
        },
        (false, Heads::All) => ClsMaps::EveryHead { layer },
        (false, _) => ClsMaps::Fused { layer, fusion },
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: could not create", args.out.display()))?;
    let progress = bar(paths.len(), "attention");
    for (path, stem) in paths.iter().zip(&stems) {
        let image = load_rgb(path)?;
        let seen = explain(&model, &config, &image, &device);
        let grid = (seen.grid[0], seen.grid[1]);
        let maps = cls_maps(&seen.attentions, 1, grid, which);
        let label = gaze_nn::argmax(&seen.probabilities);
        let probability = seen.probabilities[label];
        let name = names.as_ref().map(|n| n[label].clone());
        let title = format!(
            "{}: {} ({:.1} %)",
            gaze_data::display_name(path),
            name.clone().unwrap_or_else(|| format!("class {label}")),
            100.0 * probability
        );
        let (left, top, size) = seen.crop;
        let region = Region {
            x: left,
            y: top,
            width: size,
            height: size,
        };
        let columns = if maps.len() > 4 { 4 } else { maps.len() + 1 };
        let figure = attention_figure(&seen.view, region, &maps, &title, args.colormap.into(), columns);
        let json = AttentionRecord {
            grid: seen.grid,
            cls_attention: maps[0].1.iter().copied().collect(),
            label,
            name,
            probability,
        };
        write_figure(&args.out, stem, &figure, args.json.then_some(&json))?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    eprintln!(
        "wrote {} attention figures to {}",
        paths.len(),
        args.out.display()
    );
    Ok(())
}
