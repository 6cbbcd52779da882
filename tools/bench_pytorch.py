#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench`: the same workloads as crates/vit/examples/bench.rs
(timm vit_small_patch16_384, 37 classes, fp32, CPU threads = all cores), one JSON object
per line. Needs torch and timm."""
import json
import os
import sys
import time

import timm
import torch
import torch.nn.functional as F

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def median_time(run):
    run()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def report(workload, images, seconds):
    print(json.dumps({"workload": workload, "unit": "images/s", "value": images / seconds}), flush=True)


def main():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_384", num_classes=37).eval()
    with torch.no_grad():
        for batch in (1, 8):
            x = torch.randn(batch, 3, 384, 384)
            report(f"vit_infer_b{batch}", batch, median_time(lambda: model(x)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    x, y = torch.randn(8, 3, 384, 384), torch.arange(8)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    report("vit_train_b8", 8, median_time(step))
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), file=sys.stderr)


if __name__ == "__main__":
    main()
