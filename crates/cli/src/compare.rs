//! `gaze compare`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use gaze_train::{RunRecord, comparison_table};

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

pub fn run_compare(args: CompareArgs) -> Result<()> {
    let runs: Vec<RunRecord> = args
        .runs
        .iter()
        .map(|d| RunRecord::read(d))
        .collect::<Result<_, _>>()?;
    let md = comparison_table(&runs);
    print!("{md}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: could not create", args.out.display()))?;
    let md_path = args.out.join("compare.md");
    gaze_data::write_atomic(&md_path, md.as_bytes())
        .with_context(|| format!("{}: could not write", md_path.display()))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let accuracy = r
                .rows
                .iter()
                .filter_map(|row| row.val_acc.map(|a| (row.epoch as f64, 100.0 * a)));
            (r.name.clone(), accuracy.collect())
        })
        .collect();
    let chart = gaze_viz::figures::line_chart(&series, "Validation accuracy", "epoch", "accuracy (%)");
    let png = args.out.join("val_curves.png");
    gaze_viz::save_png(&chart, &png).with_context(|| format!("{}: could not write", png.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), png.display());
    Ok(())
}
