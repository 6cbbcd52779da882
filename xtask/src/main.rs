//! Project automation: `cargo xtask <command>`. Every command is declared in [`Command`].

use std::path::PathBuf;
use std::process::Command as Process;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xtask::{bench, fetch, reproduce, root, run};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gaze project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole assignment in one command: on built-in synthetic data by default, or on the
    /// real data and weights (--data, --vit-weights, --catr-weights, --vocab), each mode in its
    /// own folder under --out. Steps whose command and inputs are unchanged are skipped.
    /// Writes runs/reproduce/<mode>/report.html.
    Reproduce(reproduce::ReproduceArgs),
    /// ViT-S/16-384 inference and training throughput and CATR caption latency (release
    /// build), beside PyTorch's when a Python with torch and timm is available; prints ratios
    /// (above 1: gaze is faster).
    Bench(bench::BenchArgs),
    /// Download the published ViT-S/16-384 weights, the CATR v3 checkpoint and the BERT
    /// uncased vocabulary (needs internet), resuming partial downloads.
    Fetch(fetch::FetchArgs),
    /// Run the test suite exactly as CI does (`cargo test --workspace`).
    Test,
    /// Regenerate the parity fixtures from timm (needs a Python with torch 2.9.0, timm 1.0.20
    /// and safetensors; not needed for testing).
    Fixtures {
        /// Python interpreter that has torch and timm.
        #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
        python: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Reproduce(args) => reproduce::reproduce(&root(), args),
        Command::Bench(args) => bench::bench(&root(), args),
        Command::Fetch(args) => fetch::fetch(&root(), args),
        Command::Test => {
            let mut cmd = Process::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["test", "--workspace"]);
            run(cmd)
        }
        Command::Fixtures { python } => {
            let scripts = [
                "tools/gen_vit_fixtures.py",
                "tools/gen_train_fixtures.py",
                "tools/gen_catr_fixtures.py",
                "tools/gen_catr_full.py",
            ];
            for script in scripts {
                let mut cmd = Process::new(&python);
                cmd.arg(script);
                run(cmd)?;
            }
            Ok(())
        }
    }
}
