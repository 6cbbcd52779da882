#!/usr/bin/env python3
"""Where a ViT bench workload spends its time, and how fast its matrix products run inside it.

Runs one workload of the release bench example (`cargo xtask bench`'s gaze side, flex) under
`perf record -e cpu-clock`, groups the samples (the linear layers' panel kernel, gemm's
micro-kernels, gemm's packing, softmax, GELU, layer norm, the Linux kernel, ...), and divides
the workload's matrix-product FLOPs by the CPU time spent in the micro-kernels: the rate the
kernels reach inside the model, per core, against the machine's FMA peak per core (the
fastest 5 ms slice) and its sustained rate (the 10 s average), both measured first.

    python3 tools/perf_profile.py --only vit_infer_b8
    python3 tools/perf_profile.py --only vit_train_b8 --repeats 2

Needs `perf` (Debian: linux-perf) and only the standard library. The samples include the
untimed warm-up run and the random input's generation (listed as setup); every run, warm-up
included, counts towards the FLOPs.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target", "release", "examples", "bench")
BATCH = {"vit_infer_b1": 1, "vit_infer_b8": 8, "vit_train_b8": 8}

# (group, test on the symbol); the first that matches names the sample.
GROUPS = [
    ("panel kernel (linear layers)", lambda s: "panels::" in s),
    ("gemm micro-kernel", lambda s: "gemm_f32::microkernel" in s),
    ("gemm packing and loops", lambda s: "gemm_common" in s or "gemm_f32" in s),
    ("softmax", lambda s: "softmax" in s),
    ("GELU", lambda s: "gelu" in s),
    ("layer norm", lambda s: "norm_" in s),
    ("setup (random input)", lambda s: any(w in s for w in ("rand", "chacha", "random", "istribution"))),
    ("copies", lambda s: "memmove" in s or "memcpy" in s or "memset" in s),
]
KERNELS = ("panel kernel (linear layers)", "gemm micro-kernel")


def bench(env):
    out = subprocess.run([BENCH], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BATCH), default="vit_infer_b8")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument("--freq", type=int, default=1999, help="samples per second per CPU")
    args = parser.parse_args()

    subprocess.run(
        ["cargo", "build", "-q", "--release", "-p", "gaze-cli", "--example", "bench",
         "--no-default-features", "--features", "flex,wgpu"],
        cwd=ROOT, check=True)
    peak = next(r for r in bench({"BENCH_ONLY": "fma_peak"}) if r["workload"] == "fma_peak")
    threads = peak["threads"]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        record = subprocess.run(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(args.freq), "-o", data, BENCH],
            env={**os.environ, "BENCH_ONLY": args.only, "BENCH_REPEATS": str(args.repeats)},
            capture_output=True, text=True)
        if record.returncode != 0:
            sys.exit(f"perf record failed: {record.stderr.strip()}")
        row = json.loads(next(l for l in record.stdout.splitlines() if l.startswith("{")))
        report = subprocess.run(
            ["perf", "report", "-i", data, "--sort", "symbol", "--stdio", "-F", "overhead,sample,sym"],
            capture_output=True, text=True, check=True).stdout

    samples = collections.Counter()
    for line in report.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+\[(.)\]\s+(.*\S)", line)
        if not m:
            continue
        count, space, symbol = int(m.group(1)), m.group(2), m.group(3)
        group = next((g for g, test in GROUPS if test(symbol)), None)
        if group is None:
            group = "Linux kernel (page faults, scheduling)" if space == "k" else "other"
        samples[group] += count
    total = sum(samples.values())

    images = (args.repeats + 1) * BATCH[args.only]
    flop = row["flop_per_image"] * images
    kernel_seconds = sum(samples[g] for g in KERNELS) / args.freq
    per_core = flop / kernel_seconds / 1e9
    print(f"{args.only}: {row['value']:.2f} images/s, {row['value'] * row['flop_per_image'] / 1e9:.0f} GFLOP/s "
          f"({100 * row['value'] * row['flop_per_image'] / 1e9 / peak['value']:.0f} % of the peak, "
          f"{100 * row['value'] * row['flop_per_image'] / 1e9 / peak['sustained']:.0f} % of the sustained rate)")
    print(f"FMA peak {peak['value']:.1f} GFLOP/s, sustained {peak['sustained']:.1f} ({threads} threads, {peak['isa']})")
    print(f"{total} samples, {total / args.freq:.1f} CPU-seconds\n")
    print("| where | share of the samples | CPU-seconds |")
    print("|---|---|---|")
    for group, count in samples.most_common():
        print(f"| {group} | {100 * count / total:.1f} % | {count / args.freq:.2f} |")
    print(f"\nmatrix products inside the model: {flop / 1e9:.0f} GFLOP in {kernel_seconds:.2f} CPU-seconds of "
          f"micro-kernels = {per_core:.1f} GFLOP/s per core: {100 * per_core * threads / peak['value']:.0f} % of "
          f"the peak per core, {100 * per_core * threads / peak['sustained']:.0f} % of the sustained rate")


if __name__ == "__main__":
    main()
