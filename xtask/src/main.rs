//! Project automation: `cargo xtask <command>`. Every command is declared in [`Command`].

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod fetch;
mod reproduce;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gaze project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole assignment in one command: on built-in synthetic data by default, or on the
    /// real data and weights (--data, --vit-weights, --catr-weights, --vocab). Steps whose
    /// outputs are newer than their inputs are skipped. Writes runs/reproduce/report.html.
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(mut cmd: Process) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Environment for building and running the `tch` backend against the libtorch inside
/// `python`'s torch (burn-tch 0.22 wants torch 2.9.0): `LIBTORCH_USE_PYTORCH`, that Python
/// first on `PATH` (torch-sys asks `python` where torch is), and torch's libraries on
/// `LD_LIBRARY_PATH` (the binary has no RPATH).
fn libtorch_env(python: &Path) -> Result<Vec<(String, String)>> {
    let out = Process::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)",
        ])
        .output()
        .with_context(|| format!("could not run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} has no torch; the tch backend needs a Python with torch 2.9.0 (pass --python or set GAZE_PYTHON)",
            python.display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (torch_dir, version) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    if !version.starts_with("2.9.") {
        bail!(
            "{}: torch {version}, but burn-tch 0.22 builds against torch 2.9.0",
            python.display()
        );
    }
    let prepend = |var: &str, dir: String| match std::env::var(var) {
        Ok(old) if !old.is_empty() => format!("{dir}:{old}"),
        _ => dir,
    };
    let python_dir = std::fs::canonicalize(python)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // A venv's bin/python may resolve to the system interpreter: keep the venv's bin first.
    let venv_bin = python.parent().map(Path::to_path_buf).unwrap_or(python_dir);
    Ok(vec![
        ("LIBTORCH_USE_PYTORCH".into(), "1".into()),
        ("PATH".into(), prepend("PATH", venv_bin.display().to_string())),
        (
            "LD_LIBRARY_PATH".into(),
            prepend("LD_LIBRARY_PATH", format!("{torch_dir}/lib")),
        ),
    ])
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
