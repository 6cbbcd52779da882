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
    /// Run gaze's and PyTorch's benches alternately this many times and report the median
    /// of the rounds: on a shared machine the speed drifts over minutes, and alternating lets
    /// both sides see the same drift.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Python with torch and timm for the reference rows (skipped if it has neither).
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write {"machine", "rows": [{"workload", "unit", "gaze", "pytorch", "ratio",
    /// "gaze_rounds", "pytorch_rounds"}]} here (the rounds' values before the median).
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

/// The median over the rounds of `workload`'s value (rounds without it are skipped).
fn median_value(rounds: &[Vec<Value>], workload: &str) -> Option<f64> {
    let mut values: Vec<f64> = rounds.iter().filter_map(|rows| value(rows, workload)).collect();
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
            &args.backend,
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
    let (mut gaze_rounds, mut pytorch_rounds) = (Vec::new(), Vec::new());
    let mut torch_runs = true;
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            println!("round {round} of {}", args.rounds);
        }
        let out = cmd.output().context("could not run cargo")?;
        if !out.status.success() {
            bail!("gaze bench failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        gaze_rounds.push(json_lines(&out.stdout));
        if !torch_runs {
            continue;
        }
        match torch.output() {
            Ok(o) if o.status.success() => pytorch_rounds.push(json_lines(&o.stdout)),
            _ => {
                println!(
                    "(no PyTorch rows: {} cannot run {} with torch and timm)",
                    args.python.display(),
                    script.display()
                );
                // gaze's rounds go on without it.
                torch_runs = false;
            }
        }
    }
    let gaze = &gaze_rounds[0];
    let mut rows = Vec::new();
    println!(
        "\n| workload | unit | gaze | PyTorch | ratio (above 1: gaze is faster) |\n|---|---|---|---|---|"
    );
    for row in gaze {
        let workload = row["workload"].as_str().unwrap_or_default();
        let unit = row["unit"].as_str().unwrap_or("images/s");
        let (g, p) = (
            median_value(&gaze_rounds, workload),
            median_value(&pytorch_rounds, workload),
        );
        // Throughput: gaze / PyTorch; latency (seconds): PyTorch / gaze.
        let ratio = g.zip(p).map(|(g, p)| if unit == "s" { p / g } else { g / p });
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "| {workload} | {unit} | {} | {} | {} |",
            fmt(g),
            fmt(p),
            fmt(ratio)
        );
        let each = |rounds: &[Vec<Value>]| -> Vec<Option<f64>> {
            rounds.iter().map(|rows| value(rows, workload)).collect()
        };
        rows.push(json!({
            "workload": workload, "unit": unit, "gaze": g, "pytorch": p, "ratio": ratio,
            "gaze_rounds": each(&gaze_rounds), "pytorch_rounds": each(&pytorch_rounds),
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
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("{}: could not write", path.display()))?;
    }
    Ok(())
}
