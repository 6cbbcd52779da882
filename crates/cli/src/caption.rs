//! `gaze caption`: CATR captions with one attention map per word.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use gaze_caption::{CatrConfig, Vocab, load_catr, preprocess, stored_config, words};
use gaze_data::{collect_images, ensure_readable, figure_stems, load_rgb};
use gaze_records::{CaptionRecord, WordRecord};
use gaze_viz::Colormap;
use gaze_viz::figures::{Region, attention_figure};

use crate::outputs::{claim, figure_files};
use crate::progress::bar;

/// Caption images with CATR and draw where the decoder looked for every word.
#[derive(Args)]
pub struct CaptionArgs {
    /// CATR checkpoint (torch.save({'model': state_dict}), zip or legacy format).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// BERT uncased word pieces: vocab.txt or tokenizer.json.
    #[arg(long, value_name = "FILE")]
    vocab: PathBuf,
    /// Image files and/or folders.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Output folder; gets <stem>.png per image (and <stem>.json with --json); where two
    /// images share a stem, each is named by its whole file name (a.jpg.png, a.png.png).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also write <stem>.json: caption, token_ids, feat_grid, attention, words.
    #[arg(long)]
    json: bool,
    /// Architecture as JSON: fields of CatrConfig, the rest from the published v3 model
    /// [default: the one stored in a file written by `gaze caption-train`, else v3].
    #[arg(long, value_name = "FILE")]
    arch: Option<PathBuf>,
    /// Longest caption in word pieces.
    #[arg(long, default_value_t = 127)]
    max_tokens: usize,
    /// Panels per row in the figure.
    #[arg(long, default_value_t = 4)]
    columns: usize,
    /// Backend device (see `gaze predict --help`).
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn caption(args: CaptionArgs) -> Result<()> {
    let config = match &args.arch {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: could not read", path.display()))?;
            let given: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
            CatrConfig::from_partial(&given)
                .map_err(|e| anyhow::anyhow!("{}: not a CATR config: {e}", path.display()))?
        }
        None => stored_config(&args.weights)?.unwrap_or_else(CatrConfig::v3),
    };
    let paths = collect_images(&args.images)?;
    let stems = figure_stems(&paths)?;
    let inputs = [&args.weights, &args.vocab]
        .into_iter()
        .chain(&args.arch)
        .chain(&paths);
    claim(
        inputs.map(PathBuf::as_path),
        &figure_files(&args.out, &stems, args.json),
    )?;
    ensure_readable(&paths)?;
    let vocab = Vocab::from_file(&args.vocab)?;
    let device = gaze_nn::parse_device(&args.device)?;
    // The weights first: a file that is no CATR checkpoint says so before the vocabulary
    // is compared with it.
    let model = load_catr(&args.weights, &config, &device)?;
    if vocab.len() != config.vocab_size {
        bail!(
            "{}: {} word pieces, but the model has {}; use the vocabulary the checkpoint was trained with (bert-base-uncased for the published CATR)",
            args.vocab.display(),
            vocab.len(),
            config.vocab_size
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: could not create", args.out.display()))?;
    let captioner = model.captioner();
    let progress = bar(paths.len(), "caption");
    for (path, stem) in paths.iter().zip(&stems) {
        let (resized, pixels) = preprocess(&load_rgb(path)?, config.max_dim);
        let (w, h) = resized.dimensions();
        let input = Tensor::<4>::from_data(TensorData::new(pixels, [1, 3, h as usize, w as usize]), &device);
        let started = std::time::Instant::now();
        let out = captioner.caption(input, args.max_tokens);
        let seconds = started.elapsed().as_secs_f64();
        let text = vocab.decode(&out.tokens);
        progress.suspend(|| {
            println!(
                "{}: {text} ({} tokens, {seconds:.2} s)",
                gaze_data::display_name(path),
                out.tokens.len()
            )
        });
        let (gh, gw) = out.grid;
        let grouped = words(&vocab, &out.tokens);
        let maps = out.word_maps(&grouped);
        // Feature cell (y, x) covers pixels [sy, sy + s) x [sx, sx + s) for stride s: the
        // grid overhangs the image when a side is not a multiple of s.
        let stride = config.output_stride() as u32;
        let region = Region {
            x: 0,
            y: 0,
            width: stride * gw as u32,
            height: stride * gh as u32,
        };
        let title = if text.is_empty() {
            "(empty caption)".to_string()
        } else {
            text.clone()
        };
        let figure = attention_figure(&resized, region, &maps, &title, Colormap::Viridis, args.columns);
        let grid = |row: &[f32]| row.chunks(gw).map(<[f32]>::to_vec).collect::<Vec<_>>();
        let json = CaptionRecord {
            caption: text,
            token_ids: out.tokens.clone(),
            feat_grid: [gh, gw],
            attention: out.attention[..out.tokens.len()]
                .iter()
                .map(|row| grid(row))
                .collect(),
            end_attention: out.end_attention().map(grid),
            words: grouped
                .into_iter()
                .map(|w| WordRecord {
                    text: w.text,
                    steps: w.steps,
                })
                .collect(),
        };
        crate::figures::write_figure(&args.out, stem, &figure, args.json.then_some(&json))?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    eprintln!("wrote {} captions to {}", paths.len(), args.out.display());
    Ok(())
}
