#!/usr/bin/env python3
"""Expected outputs of a full-size CATR v3 (ResNet-101, d 256, 6+6 layers, 30522 words;
84M parameters) whose weights are a deterministic formula of each tensor's name, so that
the Rust test can rebuild the same checkpoint instead of shipping 338 MB.

    ~/pyref/bin/python tools/gen_catr_full.py

Writes crates/caption/tests/fixtures/full_expected.json (tokens per image) and
full_expected.safetensors (attention rows per image, as in gen_catr_fixtures.py).
The formula is mirrored in crates/cli/tests/caption_full.rs (`catr_formula_value`).
"""
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import functional as TF

sys.path.insert(0, os.path.dirname(__file__))
from gen_catr_fixtures import OUT, Caption, greedy, under_max  # noqa: E402
from gen_vit_fixtures import fnv1a, hashed  # noqa: E402


def catr_formula_value(name, shape):
    n = int(np.prod(shape))
    h = hashed(n, fnv1a(name))
    if name.endswith("running_var"):
        v = 1.0 + 0.4 * h
    elif name.endswith("running_mean"):
        v = 0.1 * h
    elif name.endswith("bn3.weight"):
        v = 0.2 + 0.1 * h
    elif name.endswith("weight") and (".bn" in name or "downsample.1" in name):
        v = 1.0 + 0.2 * h
    elif name.endswith("bias"):
        v = 0.1 * h
    elif "norm" in name.lower():
        v = 1.0 + 0.2 * h
    elif "embeddings" in name:
        v = 0.5 * h
    else:
        fan_in = int(np.prod(shape[1:]))
        v = h * 2.0 * math.sqrt((6.0 if len(shape) == 4 else 3.0) / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    model = Caption(blocks=(3, 4, 23, 3), base=64, d=256, heads=8, ffn=2048, enc=6, dec=6, vocab=30522).eval()
    sd = {k: catr_formula_value(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    assert len(sd) == 716, len(sd)
    model.load_state_dict(sd, strict=True)
    meta, tensors = {}, {}
    torch.set_num_threads(2)
    for stem in ["wide_640x480", "tall_480x640", "square_300x300", "odd_550x400"]:
        img = Image.open(os.path.join(OUT, "images", stem + ".png")).convert("RGB")
        x = TF.normalize(TF.to_tensor(under_max(img)), (0.5,) * 3, (0.5,) * 3)
        tokens, rows, _ = greedy(model, x)
        meta[stem] = tokens
        tensors[f"attn.{stem}"] = rows.contiguous()
        print(stem, len(tokens), "tokens", tokens[:12])
    with open(os.path.join(OUT, "full_expected.json"), "w") as f:
        json.dump(meta, f)
    save_file(tensors, os.path.join(OUT, "full_expected.safetensors"))


if __name__ == "__main__":
    main()
