//! `gaze synth`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gaze_data::scenes::{SceneSetConfig, write_scene_set};
use gaze_data::synth::{SynthConfig, write_synth};

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
    /// Image side in pixels, 16 to 4096.
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
