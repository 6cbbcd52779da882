//! `cargo xtask bench`: gaze's workloads beside PyTorch's on the same machine, as ratios.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

#[derive(Args)]
pub struct BenchArgs {
    /// gaze backend feature: flex, ndarray, tch (built against --python's torch), cuda or wgpu.
    #[arg(long, default_value = "flex", value_parser = ["flex", "ndarray", "tch", "cuda", "wgpu"])]
    backend: String,
    /// gaze device [default: the backend's CPU device; e.g. tch-cuda, cuda, wgpu for a GPU].
    #[arg(long)]
    device: Option<String>,
    /// PyTorch device for the reference rows: cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    torch_device: String,
    /// Timed runs per workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Run each workload this many times on both sides and report medians: in each round a
    /// workload's gaze and PyTorch runs come back to back, the side that goes first taking
    /// turns, and the ratio is the median of the rounds' ratios, so both sides of a ratio see
    /// the same moment of a shared machine, whose speed drifts over minutes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Only these workloads, comma-separated (e.g. `--only vit_train_b8 --rounds 8` to pin one
    /// row down); all four when not given.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    only: Vec<String>,
    /// Python with torch and timm for the reference rows (skipped if it has neither).
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write {"machine", "rows": [{"workload", "unit", "gaze", "pytorch", "ratio",
    /// "gaze_rounds", "pytorch_rounds", "ratio_rounds"}]} here (the rounds' values before the
    /// median).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn value(rows: &[Value], workload: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r["workload"] == workload)
        .and_then(|r| r["value"].as_f64())
}

/// The workloads of `crates/cli/examples/bench.rs` and `tools/bench_pytorch.py`, each run by
/// itself (`BENCH_ONLY`), in the table's order.
const WORKLOADS: [&str; 4] = ["vit_infer_b1", "vit_infer_b8", "vit_train_b8", "caption_127"];

/// The median of `values`, `None` if there are none.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn bench(root: &Path, args: BenchArgs) -> Result<()> {
    let repeats = args.repeats.to_string();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args([
            "run",
            "-q",
            "--release",
            "-p",
            "gaze-cli",
            "--example",
            "bench",
            "--no-default-features",
            "--features",
            crate::backend_features(&args.backend),
        ])
        .env("BENCH_DEVICE", args.device.as_deref().unwrap_or(&args.backend))
        .env("BENCH_REPEATS", &repeats);
    if args.backend == "tch" {
        cmd.envs(crate::libtorch_env(&args.python)?);
    }
    println!("gaze ({}): {cmd:?}", args.backend);
    let script = root.join("tools/bench_pytorch.py");
    let mut torch = Command::new(&args.python);
    torch
        .arg(&script)
        .env("BENCH_REPEATS", &repeats)
        .env("BENCH_TORCH_DEVICE", &args.torch_device);
    let workloads: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w))
        .collect();
    let rounds = args.rounds as usize;
    // [round] -> the JSON lines each side printed in that round.
    let (mut gaze_rounds, mut pytorch_rounds) = (vec![Vec::new(); rounds], vec![Vec::new(); rounds]);
    let mut torch_runs = true;
    for round in 0..rounds {
        if rounds > 1 {
            println!("round {} of {rounds}", round + 1);
        }
        for &workload in &workloads {
            // gaze goes first in odd rounds, PyTorch in even ones.
            for gaze_turn in [round % 2 == 0, round % 2 == 1] {
                if gaze_turn {
                    let out = cmd
                        .env("BENCH_ONLY", workload)
                        .output()
                        .context("could not run cargo")?;
                    if !out.status.success() {
                        bail!("gaze bench failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    gaze_rounds[round].extend(json_lines(&out.stdout));
                    continue;
                }
                if !torch_runs {
                    continue;
                }
                match torch.env("BENCH_ONLY", workload).output() {
                    Ok(o) if o.status.success() => pytorch_rounds[round].extend(json_lines(&o.stdout)),
                    _ => {
                        println!(
                            "(no PyTorch rows: {} cannot run {} with torch and timm)",
                            args.python.display(),
                            script.display()
                        );
                        // gaze's runs go on without it.
                        torch_runs = false;
                    }
                }
            }
        }
    }
    let mut rows = Vec::new();
    println!(
        "\n| workload | unit | gaze | PyTorch | ratio (above 1: gaze is faster) |\n|---|---|---|---|---|"
    );
    for &workload in &workloads {
        let Some(unit) = gaze_rounds[0]
            .iter()
            .find(|r| r["workload"] == workload)
            .map(|r| r["unit"].as_str().unwrap_or("images/s").to_string())
        else {
            continue;
        };
        let each = |rounds: &[Vec<Value>]| -> Vec<Option<f64>> {
            rounds.iter().map(|rows| value(rows, workload)).collect()
        };
        let (gaze, pytorch) = (each(&gaze_rounds), each(&pytorch_rounds));
        // Throughput: gaze / PyTorch; latency (seconds): PyTorch / gaze.
        let ratios: Vec<Option<f64>> = gaze
            .iter()
            .zip(&pytorch)
            .map(|(g, p)| g.zip(*p).map(|(g, p)| if unit == "s" { p / g } else { g / p }))
            .collect();
        let (g, p) = (
            median(gaze.iter().flatten().copied().collect()),
            median(pytorch.iter().flatten().copied().collect()),
        );
        let ratio = median(ratios.iter().flatten().copied().collect());
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "| {workload} | {unit} | {} | {} | {} |",
            fmt(g),
            fmt(p),
            fmt(ratio)
        );
        rows.push(json!({
            "workload": workload, "unit": unit, "gaze": g, "pytorch": p, "ratio": ratio,
            "gaze_rounds": gaze, "pytorch_rounds": pytorch, "ratio_rounds": ratios,
        }));
    }
    if let Some(path) = &args.json {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let report = json!({
            "machine": {
                "backend": args.backend,
                "device": args.device.as_deref().unwrap_or(&args.backend),
                "torch_device": args.torch_device,
                "threads": threads,
                "cpu": cpu_model(),
                "repeats": args.repeats,
                "rounds": args.rounds,
            },
            "rows": rows,
        });
        gaze_data::write_atomic(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("{}: could not write", path.display()))?;
    }
    Ok(())
}
