#!/usr/bin/env python3
"""Writes a ViT-S/16-384 checkpoint for the README's example figures (docs/).

Pretrained weights cannot be downloaded where gaze is developed, so the examples use the
deterministic formula weights of the parity tests with one change: the position embeddings
are random Fourier features of the patch coordinates, whose cosine similarity falls off
with distance like a Gaussian, the local structure learned ViT position embeddings show
(ViT paper, Fig. 7). These are illustrations of the figure, not results.

    ~/pyref/bin/python tools/gen_docs_examples.py /tmp/docs_vit.safetensors
    gaze posembed --weights /tmp/docs_vit.safetensors --out docs/posembed.png
    gaze attention --weights /tmp/docs_vit.safetensors --images crates/vit/tests/fixtures/images/rgb_640x427.png --out docs/
"""
import os
import sys

import timm
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from gen_vit_fixtures import formula_value  # noqa: E402

model = timm.create_model("vit_small_patch16_384", num_classes=37)
sd = {k: formula_value(k, tuple(v.shape)) for k, v in model.state_dict().items()}
gen = torch.Generator().manual_seed(0)
rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
coords = torch.stack([rows.flatten(), cols.flatten()], 1)  # [576, 2]
freqs = torch.randn(2, 384, generator=gen) * 0.3
phase = torch.rand(384, generator=gen) * 2 * torch.pi
grid = torch.cos(coords @ freqs + phase) * 0.1
sd["pos_embed"] = torch.cat([torch.zeros(1, 384), grid], 0)[None].contiguous()
save_file(sd, sys.argv[1])
print("wrote", sys.argv[1])
