//! `cargo xtask bench`: gaze's workloads beside PyTorch's on the same machine, as ratios,
//! and the ViT rows as GFLOP/s and a share of the machine's measured fp32 FMA peak.

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
    /// gaze's ViT products: fp32, or bf16 (AVX512_BF16 where the CPU has it, else emulated;
    /// the flex backend only).
    #[arg(long, default_value = "fp32", value_parser = ["fp32", "bf16"])]
    precision: String,
    /// PyTorch device for the reference rows: cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    torch_device: String,
    /// Timed runs per workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Run each workload this many times on every side and report medians: in each round a
    /// workload's gaze and reference runs come back to back, the side that goes first
    /// rotating, and each ratio is the median of the rounds' ratios, so both sides of a ratio
    /// see the same moment of a shared machine, whose speed drifts over minutes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Only these workloads, comma-separated (e.g. `--only vit_train_b8 --rounds 8` to pin one
    /// row down); all four when not given.
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(WORKLOADS))]
    only: Vec<String>,
    /// Python with torch and timm (and onnxruntime for its column) for the reference columns;
    /// a column whose packages are missing is skipped with the reason.
    #[arg(long, env = "GAZE_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Also write {"machine" (with "fma_peak", "panel_kernel", "bf16_peak" and
    /// "bf16_kernel"), "rows": [{"workload",
    /// "unit", "gaze", "references": {fp32, bf16, onnx}, "ratios": {...}, "gaze_gflops",
    /// "pytorch_gflops", "rounds": [[gaze's], [fp32's], ...], "ratio_rounds"}]} here (the
    /// rounds' values before the median).
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

/// The reference columns: `tools/bench_pytorch.py`'s `BENCH_VARIANT` and the column's name.
/// bf16 has no caption row, ONNX Runtime only the inference rows.
const REFERENCES: [(&str, &str); 3] = [
    ("fp32", "PyTorch fp32"),
    ("bf16", "PyTorch bf16 autocast"),
    ("onnx", "ONNX Runtime fp32"),
];

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
        .env("BENCH_REPEATS", &repeats)
        .env("BENCH_PRECISION", &args.precision);
    if args.backend == "tch" {
        cmd.envs(crate::libtorch_env(&args.python)?);
    }
    println!("gaze ({}, {}): {cmd:?}", args.backend, args.precision);
    let script = root.join("tools/bench_pytorch.py");
    let workloads: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|o| o == w))
        .collect();
    let out = cmd
        .env("BENCH_ONLY", "fma_peak")
        .output()
        .context("could not run cargo")?;
    if !out.status.success() {
        bail!("gaze bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let machine_rows = json_lines(&out.stdout);
    let peak_row = machine_rows.iter().find(|r| r["workload"] == "fma_peak").cloned();
    let kernel_row = machine_rows
        .iter()
        .find(|r| r["workload"] == "panel_kernel")
        .cloned();
    let rate = |row: &Option<Value>, key: &str| row.as_ref().and_then(|r| r[key].as_f64());
    let peak = rate(&peak_row, "value").zip(rate(&peak_row, "sustained"));
    if let (Some(row), Some((best, sustained))) = (&peak_row, peak) {
        println!(
            "fp32 FMA peak: {best:.1} GFLOP/s (the fastest 5 ms slice; {sustained:.1} sustained over 10 s, {:.0} %; {} threads, {})",
            100.0 * sustained / best,
            row["threads"],
            row["isa"].as_str().unwrap_or("?")
        );
    }
    let kernel = rate(&kernel_row, "value").zip(rate(&kernel_row, "sustained"));
    match (kernel, peak) {
        (Some((kernel_best, kernel_sustained)), Some((best, sustained))) => println!(
            "linear layers' micro-kernel on cache-resident operands: {kernel_best:.1} GFLOP/s fastest, {kernel_sustained:.1} sustained ({:.0} % and {:.0} % of the FMA loop's; {})",
            100.0 * kernel_best / best,
            100.0 * kernel_sustained / sustained,
            kernel_row.as_ref().and_then(|r| r["isa"].as_str()).unwrap_or("?")
        ),
        _ => println!("linear layers' micro-kernel: gemm's own (this CPU does not run gaze's panels)"),
    }
    let row = |name: &str| machine_rows.iter().find(|r| r["workload"] == name).cloned();
    let (bf16_peak, bf16_kernel) = (row("bf16_peak"), row("bf16_kernel"));
    match (rate(&bf16_peak, "value").zip(rate(&bf16_peak, "sustained")), peak) {
        (Some((bf16_best, bf16_sustained)), Some((best, _))) => {
            println!(
                "bf16 product peak (vdpbf16ps): {bf16_best:.1} GFLOP/s fastest, {bf16_sustained:.1} sustained ({:.2}x the fp32 peak)",
                bf16_best / best
            );
            if let Some((kernel_best, kernel_sustained)) =
                rate(&bf16_kernel, "value").zip(rate(&bf16_kernel, "sustained"))
            {
                println!(
                    "bf16 micro-kernel on cache-resident operands: {kernel_best:.1} GFLOP/s fastest, {kernel_sustained:.1} sustained ({:.0} % and {:.0} % of the bf16 peak's)",
                    100.0 * kernel_best / bf16_best,
                    100.0 * kernel_sustained / bf16_sustained
                );
            }
        }
        _ => println!("bf16 products: no AVX512_BF16 on this CPU (--precision bf16 runs emulated)"),
    }
    let rounds = args.rounds as usize;
    // Side 0 is gaze, then the references; [side][round] -> the JSON lines printed.
    let mut results = vec![vec![Vec::new(); rounds]; 1 + REFERENCES.len()];
    let mut missing: Vec<Option<String>> = vec![None; REFERENCES.len()];
    for round in 0..rounds {
        if rounds > 1 {
            println!("round {} of {rounds}", round + 1);
        }
        for &workload in &workloads {
            // Back to back, the side that goes first taking turns from round to round.
            let sides = results.len();
            for side in (0..sides).map(|k| (k + round) % sides) {
                if side == 0 {
                    let out = cmd
                        .env("BENCH_ONLY", workload)
                        .output()
                        .context("could not run cargo")?;
                    if !out.status.success() {
                        bail!("gaze bench failed: {}", String::from_utf8_lossy(&out.stderr));
                    }
                    results[0][round].extend(json_lines(&out.stdout));
                    continue;
                }
                let (variant, name) = REFERENCES[side - 1];
                if missing[side - 1].is_some() || (variant != "fp32" && workload == "caption_127") {
                    continue;
                }
                if variant == "onnx" && workload == "vit_train_b8" {
                    continue;
                }
                let out = Command::new(&args.python)
                    .arg(&script)
                    .env("BENCH_REPEATS", &repeats)
                    .env("BENCH_TORCH_DEVICE", &args.torch_device)
                    .env("BENCH_VARIANT", variant)
                    .env("BENCH_ONLY", workload)
                    .output();
                match out {
                    Ok(o) if o.status.success() => results[side][round].extend(json_lines(&o.stdout)),
                    other => {
                        let why = match other {
                            Ok(o) => String::from_utf8_lossy(&o.stderr)
                                .lines()
                                .last()
                                .unwrap_or("")
                                .to_string(),
                            Err(e) => e.to_string(),
                        };
                        println!(
                            "(no {name} column: {} {}: {why})",
                            args.python.display(),
                            script.display()
                        );
                        missing[side - 1] = Some(why);
                    }
                }
            }
        }
    }
    let mut rows = Vec::new();
    let names: Vec<&str> = REFERENCES.iter().map(|r| r.1).collect();
    // bf16 products are held to the bf16 peak where the CPU has one.
    let bf16_rates = rate(&bf16_peak, "value").zip(rate(&bf16_peak, "sustained"));
    let (gaze_peak, gaze_limit) = match (args.precision.as_str(), bf16_rates) {
        ("bf16", Some(rates)) => (Some(rates), "bf16"),
        _ => (peak, "fp32"),
    };
    println!(
        "\n| workload | unit | gaze | {} | gaze / each (above 1: gaze is faster) | gaze GFLOP/s (% of the {gaze_limit} peak / of sustained) | PyTorch fp32 GFLOP/s (% of the fp32 peak / of sustained) |",
        names.join(" | ")
    );
    println!("|{}", "---|".repeat(6 + names.len()));
    for &workload in &workloads {
        let Some(unit) = results[0][0]
            .iter()
            .find(|r| r["workload"] == workload)
            .map(|r| r["unit"].as_str().unwrap_or("images/s").to_string())
        else {
            continue;
        };
        // [side][round]
        let values: Vec<Vec<Option<f64>>> = results
            .iter()
            .map(|side| side.iter().map(|lines| value(lines, workload)).collect())
            .collect();
        let medians: Vec<Option<f64>> = values
            .iter()
            .map(|v| median(v.iter().flatten().copied().collect()))
            .collect();
        // Per reference, the median of the rounds' ratios. Throughput: gaze / reference;
        // latency (seconds): reference / gaze.
        let ratio_rounds: Vec<Vec<Option<f64>>> = values[1..]
            .iter()
            .map(|reference| {
                values[0]
                    .iter()
                    .zip(reference)
                    .map(|(g, r)| g.zip(*r).map(|(g, r)| if unit == "s" { r / g } else { g / r }))
                    .collect()
            })
            .collect();
        let ratios: Vec<Option<f64>> = ratio_rounds
            .iter()
            .map(|r| median(r.iter().flatten().copied().collect()))
            .collect();
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        // Images/s times the products each side runs per image (gaze's last block for the
        // class token alone, timm's for every token).
        let flop = |key: &str| {
            results[0][0]
                .iter()
                .find(|r| r["workload"] == workload)
                .and_then(|r| r[key].as_f64())
        };
        let gflops = |rate: Option<f64>, key: &str| rate.zip(flop(key)).map(|(r, f)| r * f / 1e9);
        let gaze_gflops = gflops(medians[0], "flop_per_image");
        let pytorch_gflops = gflops(medians[1], "reference_flop_per_image");
        let share = |v: Option<f64>, peak: Option<(f64, f64)>| match (v, peak) {
            (Some(v), Some((best, sustained))) => {
                format!(
                    "{v:.0} ({:.0} % / {:.0} %)",
                    100.0 * v / best,
                    100.0 * v / sustained
                )
            }
            _ => "-".into(),
        };
        let references: Vec<String> = medians[1..].iter().map(|&v| fmt(v)).collect();
        let each: Vec<String> = ratios.iter().map(|&v| fmt(v)).collect();
        println!(
            "| {workload} | {unit} | {} | {} | {} | {} | {} |",
            fmt(medians[0]),
            references.join(" | "),
            each.join(" / "),
            share(gaze_gflops, gaze_peak),
            share(pytorch_gflops, peak)
        );
        let by_name = |items: &[Option<f64>]| -> serde_json::Map<String, Value> {
            REFERENCES
                .iter()
                .zip(items)
                .map(|((v, _), x)| (v.to_string(), json!(x)))
                .collect()
        };
        rows.push(json!({
            "workload": workload, "unit": unit, "gaze": medians[0],
            "references": by_name(&medians[1..]), "ratios": by_name(&ratios),
            "gaze_gflops": gaze_gflops, "pytorch_gflops": pytorch_gflops,
            "rounds": values, "ratio_rounds": ratio_rounds,
        }));
    }
    for ((_, name), why) in REFERENCES.iter().zip(&missing) {
        if let Some(why) = why {
            println!("{name}: skipped ({why})");
        }
    }
    if let Some(path) = &args.json {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let report = json!({
            "machine": {
                "backend": args.backend,
                "device": args.device.as_deref().unwrap_or(&args.backend),
                "torch_device": args.torch_device,
                "precision": args.precision,
                "threads": threads,
                "cpu": cpu_model(),
                "repeats": args.repeats,
                "rounds": args.rounds,
                "fma_peak": peak_row,
                "panel_kernel": kernel_row,
                "bf16_peak": bf16_peak,
                "bf16_kernel": bf16_kernel,
            },
            "rows": rows,
        });
        gaze_data::write_atomic(path, &serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("{}: could not write", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Python puts a script's folder first on `sys.path`, so a tool named like a standard
    /// module replaces that module for every script beside it: a `tools/profile.py` made
    /// torch's `import cProfile` fail, and with it every reference column of the bench.
    #[test]
    fn tool_scripts_are_named_by_role_so_none_shadows_a_standard_module() {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools");
        let mut scripts = 0;
        for entry in std::fs::read_dir(&tools).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(stem) = name.strip_suffix(".py") else {
                continue;
            };
            scripts += 1;
            assert!(
                ["gen_", "bench_", "perf_"]
                    .iter()
                    .any(|role| stem.starts_with(role)),
                "tools/{name}: name it gen_*, bench_* or perf_*, so that it cannot shadow a standard module"
            );
        }
        assert!(scripts > 0, "no scripts in {}", tools.display());
    }
}
