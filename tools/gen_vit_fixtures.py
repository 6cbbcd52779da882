#!/usr/bin/env python3
"""Writes the ViT parity fixtures under crates/vit/tests/fixtures/ from timm itself.

    python -m venv ~/pyref && ~/pyref/bin/pip install torch==2.9.0 torchvision timm==1.0.20 safetensors
    ~/pyref/bin/python tools/gen_vit_fixtures.py

Outputs (all small, committed; CI needs no Python):
  images/*.png, *.jpg      test pictures of several sizes and modes (L, P, RGBA, RGB)
  reduced.safetensors      a reduced ViT (64px, patch 16, dim 48, depth 2, 3 heads, 5 classes)
  reduced.pth              the same, torch.save(state_dict) zip format
  reduced_nested.pth       the same under {'state_dict': ...}, legacy (pre-1.6) pickle format
  expected.safetensors     timm's outputs (see keys below)

The reduced model's biases, LayerNorm affines and q/k projections are perturbed: plain timm
init makes attention uniform and LayerNorm the identity, which would hide bugs.

expected.safetensors keys, for each image stem S:
  crop384.S    uint8 [384, 384, 3]  Resize(384, bicubic) + CenterCrop(384) from timm's transform
  input64.S    f32 [3, 64, 64]      the reduced model's transform output (resize 64, crop, normalise)
  logits.S     f32 [5]              reduced model logits
  attn_last.S  f32 [3, 17, 17]      last block attention probabilities (explicit softmax)
  posemb.HxW   f32 [1, 1+H*W, 48]   resample_abs_pos_embed of reduced pos_embed (4x4 grid) to HxW
  posembed_sim f32 [16, 16]         cosine similarity of the reduced model's patch position embeddings
  cls_attn.S   f32 [16]             last block, [class] query to patch keys, mean over heads
and full/logits.S, full/logits_jpeg.S f32 [37] for the formula-weight vit_small_patch16_384
(see `formula_value`) on the PNG and JPEG versions of the rgb_* images, full/cls_attn.S f32
[576] (last block, head mean, PNG input) and full/posembed_sim_rows f32 [3, 576] (rows 0, 100
and 575 of the 576 x 576 similarity matrix).

jpeg_pixels.json: for each JPEG, FNV-1a 64 (hex) of Pillow's decoded RGB bytes and of the
384 resize+crop, so JPEG decoding is checked bit for bit without storing the pixels.
"""
import json
import os
import sys

import numpy as np
import torch
import timm
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from timm.data import create_transform, resolve_model_data_config
from timm.layers import resample_abs_pos_embed

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "vit", "tests", "fixtures")
torch.manual_seed(0)
rng = np.random.default_rng(0)


def picture(w, h, seed):
    """Smooth gradients, shapes and mild noise: structure for the resampler, small as PNG."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        127 + 120 * np.sin(x / (7 + seed) + y / 23),
        127 + 120 * np.cos(y / (5 + seed)),
        255 * x / w,
    ], -1)
    img = Image.fromarray(np.clip(base + r.normal(0, 6, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(r.integers(0, w - 20)), int(r.integers(0, h - 20))
        x1, y1 = x0 + int(r.integers(10, w // 2)), y0 + int(r.integers(10, h // 2))
        d.ellipse([x0, y0, x1, y1], fill=tuple(int(v) for v in r.integers(0, 256, 3)))
        d.rectangle([x1 // 2, y0, x1, y0 + 4], fill=(255, 255, 255))
    return img


def write_images():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    images = {}
    for i, (w, h) in enumerate([(500, 375), (375, 500), (384, 384), (640, 427)]):
        img = picture(w, h, i + 1)
        stem = f"rgb_{w}x{h}"
        img.save(os.path.join(OUT, "images", stem + ".png"))
        img.save(os.path.join(OUT, "images", stem + ".jpg"), quality=92)
        images[stem] = stem + ".png"
    modes = {
        "gray_300x200": picture(300, 200, 7).convert("L"),
        "palette_200x260": picture(200, 260, 8).convert("P", palette=Image.ADAPTIVE, colors=64),
        "rgba_97x61": Image.merge("RGBA", (*picture(97, 61, 9).split(), Image.new("L", (97, 61), 90))),
    }
    for stem, img in modes.items():
        img.save(os.path.join(OUT, "images", stem + ".png"))
        images[stem] = stem + ".png"
    return images


def perturb(m):
    """Random biases and LayerNorm affines, a random class token, and sharper q and k, in place:
    plain timm init would make attention uniform and LayerNorm the identity."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn_like(p) * 0.3)
        m.cls_token.copy_(torch.randn_like(m.cls_token))
        for blk in m.blocks:
            blk.attn.qkv.weight[:96] *= 9.0  # sharpen q and k so softmax is far from uniform
    return m


def perturbed_reduced_model():
    m = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    return perturb(m).eval()


def fnv1a(name):
    h = 0x811C9DC5
    for b in name.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def hashed(n, seed):
    """n values in [-0.5, 0.5): integer mixing, then exact float64 steps (mirrored in Rust)."""
    i = np.arange(n, dtype=np.uint64)
    x = (i * np.uint64(2654435761) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    return x.astype(np.float64) / 2.0**32 - 0.5


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def formula_value(name, shape):
    """Deterministic weights for the full-size check; crates/vit/tests/full_size.rs mirrors it."""
    n = int(np.prod(shape))
    h = hashed(n, fnv1a(name))
    if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
        v = 1.0 + 0.4 * h
    elif name.endswith("bias"):
        v = 0.2 * h
    elif name.endswith("qkv.weight"):
        rows = np.repeat(np.arange(shape[0]), shape[1])
        v = np.where(rows < 2 * shape[1], 0.5, 0.1) * h
    elif name in ("cls_token", "pos_embed"):
        v = 0.5 * h
    else:
        v = 0.1 * h
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    images = write_images()
    tensors = {}
    jpeg_pixels = {}

    full = timm.create_model("vit_small_patch16_384", num_classes=37).eval()
    cfg = resolve_model_data_config(full)
    t384 = create_transform(**cfg, is_training=False)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    crop384 = create_transform(**cfg, is_training=False).transforms[:2]

    reduced = perturbed_reduced_model()
    rcfg = dict(cfg, input_size=(3, 64, 64))
    t64 = create_transform(**rcfg, is_training=False)

    with torch.no_grad():
        sd = {k: formula_value(k, tuple(v.shape)) for k, v in full.state_dict().items()}
        full.load_state_dict(sd, strict=True)
        batch = []
        for stem, f in images.items():
            img = Image.open(os.path.join(OUT, "images", f)).convert("RGB")
            crop = img
            for t in crop384:
                crop = t(crop)
            arr = np.asarray(crop)
            tensors[f"crop384.{stem}"] = torch.from_numpy(arr.copy())
            x384 = t384(img)
            # The float steps after the crop are exactly ToTensor + Normalize in float32.
            again = (torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
            assert torch.equal(again, x384), stem
            x = t64(img)
            tensors[f"input64.{stem}"] = x
            logits = reduced(x[None])[0]
            tensors[f"logits.{stem}"] = logits
            # Last block's attention, recomputed explicitly from the block's own modules.
            tokens = reduced.patch_embed(x[None])
            tokens = reduced._pos_embed(tokens)
            for blk in reduced.blocks[:-1]:
                tokens = blk(tokens)
            a = reduced.blocks[-1].attn
            y = reduced.blocks[-1].norm1(tokens)
            qkv = a.qkv(y).reshape(1, 17, 3, 3, 16).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
            attn = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
            tensors[f"attn_last.{stem}"] = attn[0]
            tensors[f"cls_attn.{stem}"] = attn[0].mean(0)[0, 1:]
            if stem.startswith("rgb_"):
                tensors[f"full/logits.{stem}"] = full(x384[None])[0]
                tokens = full._pos_embed(full.patch_embed(x384[None]))
                for blk in full.blocks[:-1]:
                    tokens = blk(tokens)
                fa = full.blocks[-1].attn
                qkv = fa.qkv(full.blocks[-1].norm1(tokens)).reshape(1, 577, 3, 6, 64).permute(2, 0, 3, 1, 4)
                fattn = ((qkv[0] * fa.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)
                tensors[f"full/cls_attn.{stem}"] = fattn[0].mean(0)[0, 1:]
            if stem.startswith("rgb_"):
                jpg = Image.open(os.path.join(OUT, "images", stem + ".jpg")).convert("RGB")
                tensors[f"full/logits_jpeg.{stem}"] = full(t384(jpg)[None])[0]
                crop = jpg
                for t in crop384:
                    crop = t(crop)
                jpeg_pixels[stem + ".jpg"] = {
                    "decoded": fnv1a64(np.asarray(jpg).tobytes()),
                    "crop384": fnv1a64(np.asarray(crop).tobytes()),
                }
        pe = reduced.pos_embed[0, 1:]
        tensors["posembed_sim"] = torch.nn.functional.cosine_similarity(pe[:, None], pe[None, :], dim=-1)
        fpe = full.pos_embed[0, 1:]
        tensors["full/posembed_sim_rows"] = torch.nn.functional.cosine_similarity(
            fpe[[0, 100, 575]][:, None], fpe[None, :], dim=-1)
        for h, w in [(6, 6), (3, 5), (2, 2), (4, 4), (24, 32)]:
            tensors[f"posemb.{h}x{w}"] = resample_abs_pos_embed(
                reduced.pos_embed, new_size=[h, w], old_size=[4, 4], num_prefix_tokens=1)

    sd = {k: v.contiguous() for k, v in reduced.state_dict().items()}
    save_file(sd, os.path.join(OUT, "reduced.safetensors"))
    torch.save(sd, os.path.join(OUT, "reduced.pth"))
    torch.save({"state_dict": sd, "epoch": 3}, os.path.join(OUT, "reduced_nested.pth"),
               _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "jpeg_pixels.json"), "w") as f:
        json.dump(jpeg_pixels, f, indent=1, sort_keys=True)
    print("wrote", OUT)


if __name__ == "__main__":
    sys.exit(main())
