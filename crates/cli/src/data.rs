//! `gaze data`: dataset tools.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

/// Dataset tools.
#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    Convert(ConvertArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Source {
    /// The official Oxford-IIIT Pet download (images/ + annotations/).
    Pets,
}

/// Write the course layout (train/ and val/ of {label}_{id}.jpg, classes.txt) from another
/// layout. From the Pet download: trainval.txt becomes train/, test.txt val/, labels are
/// CLASS-ID - 1 (the course's numbering), and each file is copied byte for byte as
/// {label}_{official image name}.jpg, e.g. 0_Abyssinian_100.jpg (the course's own ids, such
/// as 26_5064, cannot be recovered from the official files).
#[derive(Args)]
struct ConvertArgs {
    /// The layout read.
    #[arg(long, value_enum, value_name = "LAYOUT")]
    from: Source,
    /// Its folder.
    #[arg(value_name = "DIR")]
    source: PathBuf,
    /// The new folder (must not exist, or be empty); it appears whole or not at all.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
}

pub fn run_data(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Convert(args) => convert(args),
    }
}

fn convert(args: ConvertArgs) -> Result<()> {
    let Source::Pets = args.from;
    let converted = gaze_data::convert::pets_to_course(&args.source, &args.to)?;
    eprintln!(
        "wrote {} training and {} validation images of {} classes to {}",
        converted.train,
        converted.val,
        converted.classes,
        args.to.display()
    );
    Ok(())
}
