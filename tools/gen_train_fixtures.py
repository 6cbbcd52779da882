#!/usr/bin/env python3
"""Writes the optimizer step-parity fixtures under crates/vit/tests/fixtures/train/.

    ~/pyref/bin/python tools/gen_train_fixtures.py     (after gen_vit_fixtures.py)

From the reduced ViT (reduced.safetensors) and one fixed batch of four preprocessed images
(no augmentation), two optimizer steps with warm-up learning rates (step s uses
lr * (s + 1) / 10) and label-smoothed cross-entropy (0.1):
  batch.safetensors          images f32 [4, 3, 64, 64], labels i64 [4]
  sgd_after2.safetensors     parameters after torch.optim.SGD(lr, momentum=0.9,
                             weight_decay=0.05, dampening=0), lr = 0.1
  adamw_after2.safetensors   parameters after torch.optim.AdamW(lr, betas=(0.9, 0.999),
                             eps=1e-6, weight_decay=0.05), lr = 0.01. eps is 1e-6 rather than
                             1e-8 because the key bias gets an exactly-zero gradient (softmax ignores
                             a constant added to every key) and Adam turns its float noise into
                             full-size steps when eps is tiny.
  sgd_bf16_after2.safetensors  the SGD steps with the forward pass and the loss under
                             torch.autocast("cpu", dtype=torch.bfloat16) (f32 master weights).

`--spread` prints, instead of writing, how far PyTorch's own autocast runs differ from one
another (1 and 2 threads) and from the fp32 steps: the scale the bf16 test's bound is set
against.
"""
import sys
import os

import torch
import torch.nn.functional as F
import timm
from safetensors.torch import load_file, save_file

FIX = os.path.join(os.path.dirname(__file__), "..", "crates", "vit", "tests", "fixtures")
OUT = os.path.join(FIX, "train")
STEMS = ["rgb_500x375", "gray_300x200", "rgb_640x427", "rgba_97x61"]
LABELS = [0, 3, 1, 4]


def reduced():
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    m.load_state_dict(load_file(os.path.join(FIX, "reduced.safetensors")), strict=True)
    return m.train()


def two_steps(make_optimizer, base_lr, images, labels, autocast=False):
    model = reduced()
    opt = make_optimizer(model.parameters(), base_lr)
    for step in range(2):
        for group in opt.param_groups:
            group["lr"] = base_lr * (step + 1) / 10
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        loss.backward()
        opt.step()
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def sgd(p, lr):
    return torch.optim.SGD(p, lr=lr, momentum=0.9, weight_decay=0.05, dampening=0)


def spread(images, labels):
    """Largest parameter difference, relative to the largest update, between runs."""
    start = load_file(os.path.join(FIX, "reduced.safetensors"))
    runs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs[f"bf16 {threads} thread(s)"] = two_steps(sgd, 0.1, images, labels, autocast=True)
    runs["bf16 again"] = two_steps(sgd, 0.1, images, labels, autocast=True)
    runs["fp32"] = two_steps(sgd, 0.1, images, labels)
    base = runs["bf16 2 thread(s)"]
    update = max((base[k] - start[k]).abs().max().item() for k in base)
    for name, run in runs.items():
        diff = max((run[k] - base[k]).abs().max().item() for k in base)
        print(f"{name} vs bf16 2 threads: max abs {diff:.3e} = {diff / update:.3e} of the largest update {update:.3e}")


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = load_file(os.path.join(FIX, "expected.safetensors"))
    images = torch.stack([expected[f"input64.{s}"] for s in STEMS])
    labels = torch.tensor(LABELS, dtype=torch.int64)
    if "--spread" in sys.argv:
        return spread(images, labels)
    save_file({"images": images, "labels": labels}, os.path.join(OUT, "batch.safetensors"))
    save_file(two_steps(sgd, 0.1, images, labels), os.path.join(OUT, "sgd_after2.safetensors"))
    save_file(two_steps(sgd, 0.1, images, labels, autocast=True),
              os.path.join(OUT, "sgd_bf16_after2.safetensors"))
    adamw = two_steps(lambda p, lr: torch.optim.AdamW(p, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.05),
                      0.01, images, labels)
    save_file(adamw, os.path.join(OUT, "adamw_after2.safetensors"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
