#!/usr/bin/env python3
"""Writes the CATR parity fixtures under crates/caption/tests/fixtures/.

    ~/pyref/bin/python tools/gen_catr_fixtures.py

CATR (saahiluppal/catr) re-stated in PyTorch from ../shared/reference/catr.md with the same
state-dict keys, at reduced size: Bottleneck ResNet with blocks [1, 1, 2, 2] and base width 8
(dilated last stage, frozen batch norm), d = 32, 4 heads, FFN 64, 2 encoder and 2 decoder
layers, 128 positions, a 140-entry vocabulary (vocab.txt: [PAD], [unused*], [UNK]=100,
[CLS]=101, [SEP]=102, [MASK]=103, then words and ## pieces). Weights are random with
perturbed biases and norm affines so that attention is not flat.

Outputs:
  catr_small.pth          torch.save({'model': state_dict}) (zip); captions run to 127 tokens
  catr_small_legacy.pth   the same in torch's legacy (pre-1.6) pickle format
  catr_small_ends.pth     the same with the [SEP] logit raised: captions end after 2 words
  catr_small_basic.pth    a basic-block backbone (ResNet-18/34 layout, blocks [2, 1, 1, 1], not
                          dilated): basic_tokens / basic_attn.wide_640x480
  vocab.txt
  images/*.png            several aspect ratios, 550x400 among them (long side 298)
  expected.json           per image stem S: size (w, h) after CATR's under_max resize,
                          resized_fnv (FNV-1a 64 of the resized RGB bytes), tokens (generated
                          ids, no [CLS]/[SEP]) and ends_tokens (with catr_small_ends.pth)
  expected.safetensors    logits0.S f32 [140]: logits of decoding step 0
                          attn.S f32 [m, Hf*Wf]: last decoder layer's head-mean cross-attention,
                          row k at step k, for every step including one that chose [SEP]
                          ends_attn.S: the same for catr_small_ends.pth
  (decoding as predict.py: the whole model at every step)
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torchvision.transforms import functional as TF

sys.path.insert(0, os.path.dirname(__file__))
from gen_vit_fixtures import fnv1a64  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "caption", "tests", "fixtures")
VOCAB = 140
torch.manual_seed(0)


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, n):
        super().__init__()
        for name in ["weight", "bias", "running_mean", "running_var"]:
            self.register_buffer(name, torch.ones(n) if name in ("weight", "running_var") else torch.zeros(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + bias[None, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, inplanes, width, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(width * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class BasicBlock(nn.Module):
    def __init__(self, inplanes, width, stride, dilation, downsample):
        super().__init__()
        assert dilation == 1, "torchvision's BasicBlock does not dilate"
        self.conv1 = nn.Conv2d(inplanes, width, 3, stride, padding=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    """torchvision's ResNet layout; with `dilate`, replace_stride_with_dilation=[False, False, True]."""

    def __init__(self, blocks, base, basic=False, dilate=True):
        super().__init__()
        self.block, self.expansion = (BasicBlock, 1) if basic else (Bottleneck, 4)
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = FrozenBatchNorm2d(base)
        self.inplanes, self.dilation = base, 1
        self.layer1 = self._layer(base, blocks[0], 1, False)
        self.layer2 = self._layer(base * 2, blocks[1], 2, False)
        self.layer3 = self._layer(base * 4, blocks[2], 2, False)
        self.layer4 = self._layer(base * 8, blocks[3], 2, dilate)

    def _layer(self, width, n, stride, dilate):
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        down, out = None, width * self.expansion
        if stride != 1 or self.inplanes != out:
            down = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride, bias=False), FrozenBatchNorm2d(out))
        layers = [self.block(self.inplanes, width, stride, previous, down)]
        self.inplanes = out
        layers += [self.block(self.inplanes, width, 1, self.dilation, None) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Body(nn.Module):
    def __init__(self, blocks, base, basic=False, dilate=True):
        super().__init__()
        self.body = ResNet(blocks, base, basic, dilate)


def sine_pos(h, w, d):
    npf = d // 2
    ey = torch.arange(1, h + 1, dtype=torch.float32)[:, None].expand(h, w)
    ex = torch.arange(1, w + 1, dtype=torch.float32)[None, :].expand(h, w)
    ey = ey / (ey[-1:, :] + 1e-6) * 2 * math.pi
    ex = ex / (ex[:, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(npf, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / npf)
    px, py = ex[:, :, None] / dim_t, ey[:, :, None] / dim_t
    px = torch.stack((px[:, :, 0::2].sin(), px[:, :, 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[:, :, 0::2].sin(), py[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).permute(2, 0, 1)  # [d, h, w]


class EncLayer(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x, pos):
        h = self.norm1(x)
        x = x + self.self_attn(h + pos, h + pos, h)[0]
        return x + self.linear2(F.relu(self.linear1(self.norm2(x))))


class DecLayer(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.multihead_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, t, memory, pos, qpos, causal, pad):
        h = self.norm1(t)
        t = t + self.self_attn(h + qpos, h + qpos, h, attn_mask=causal, key_padding_mask=pad)[0]
        h = self.norm2(t)
        out, weights = self.multihead_attn(h + qpos, memory + pos, memory)
        t = t + out
        return t + self.linear2(F.relu(self.linear1(self.norm3(t)))), weights


class Stack(nn.Module):
    def __init__(self, layers, d):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d)


class Embeddings(nn.Module):
    def __init__(self, vocab, d, positions):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d, padding_idx=0)
        self.position_embeddings = nn.Embedding(positions, d)
        self.LayerNorm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, ids):
        pos = self.position_embeddings.weight[: ids.shape[1]][None]
        return self.LayerNorm(self.word_embeddings(ids) + pos)


class Transformer(nn.Module):
    def __init__(self, d, heads, ffn, enc, dec, vocab, positions):
        super().__init__()
        self.encoder = Stack([EncLayer(d, heads, ffn) for _ in range(enc)], d)
        self.embeddings = Embeddings(vocab, d, positions)
        self.decoder = Stack([DecLayer(d, heads, ffn) for _ in range(dec)], d)


class MLP(nn.Module):
    def __init__(self, d, hidden, out):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out)])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 2 else F.relu(layer(x))
        return x


class Caption(nn.Module):
    def __init__(self, blocks=(1, 1, 2, 2), base=8, d=32, heads=4, ffn=64, enc=2, dec=2, vocab=VOCAB, positions=128,
                 basic=False, dilate=True):
        super().__init__()
        self.backbone = nn.ModuleList([Body(blocks, base, basic, dilate)])
        self.input_proj = nn.Conv2d(base * 8 * (1 if basic else 4), d, 1)
        self.transformer = Transformer(d, heads, ffn, enc, dec, vocab, positions)
        self.mlp = MLP(d, 2 * d, vocab)

    def forward(self, image, ids, pad):
        feat = self.backbone[0].body(image)
        _, _, hf, wf = feat.shape
        src = self.input_proj(feat).flatten(2).permute(2, 0, 1)  # [hw, 1, d]
        pos = sine_pos(hf, wf, src.shape[-1]).flatten(1).permute(1, 0)[:, None]
        x = src
        for layer in self.transformer.encoder.layers:
            x = layer(x, pos)
        memory = self.transformer.encoder.norm(x)
        t = self.transformer.embeddings(ids).permute(1, 0, 2)  # [L, 1, d]
        qpos = self.transformer.embeddings.position_embeddings.weight[:, None]
        L = ids.shape[1]
        causal = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
        for layer in self.transformer.decoder.layers:
            t, weights = layer(t, memory, pos, qpos, causal, pad)
        t = self.transformer.decoder.norm(t)
        return self.mlp(t.permute(1, 0, 2)), weights, (hf, wf)


def under_max(img):
    shape = np.array(img.size, dtype=np.float64)
    new = (shape * (299 / shape.max())).astype(int)
    return img.resize(tuple(int(v) for v in new))


def picture(w, h, seed):
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([127 + 100 * np.sin(x / 9 + y / 31), 127 + 100 * np.cos(y / 7), 255 * x / w], -1)
    img = Image.fromarray(np.clip(base + r.normal(0, 5, base.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(r.integers(0, w - 40)), int(r.integers(0, h - 40))
        d.ellipse([x0, y0, x0 + int(r.integers(20, w // 2)), y0 + int(r.integers(20, h // 2))],
                  fill=tuple(int(v) for v in r.integers(0, 256, 3)))
    return img


def vocab_lines():
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["a", "the", "red", "blue", "green", "circle", "square", "triangle", "above", "below", "left",
             "right", "of", "and", "on", "cat", "dog", "sitting", "##s", "##ing", "##ed", ".", ",", "'",
             "s", "n't", "?", "!", "two", "man", "woman", "with", "cake", "knife", "person", "cutting"]
    lines += words
    assert len(lines) == VOCAB, len(lines)
    return lines


def greedy(model, x):
    """predict.py's loop: the whole model at every step, row `step` of the logits."""
    caption = torch.zeros(1, 128, dtype=torch.int64)
    caption[0, 0] = 101
    pad = torch.ones(1, 128, dtype=torch.bool)
    pad[0, 0] = False
    tokens, rows, logits0 = [], [], None
    with torch.no_grad():
        for step in range(127):
            logits, weights, _ = model(x[None], caption, pad)
            if step == 0:
                logits0 = logits[0, 0]
            rows.append(weights[0, step])
            t = int(logits[0, step].argmax())
            if t == 102:
                break
            tokens.append(t)
            caption[0, step + 1] = t
            pad[0, step + 1] = False
    return tokens, torch.stack(rows), logits0


def main():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    model = Caption().eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand_like(t))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn_like(t) * 0.2)
            elif ("norm" in name.lower() and name.endswith("weight")) or name.endswith("bn1.weight") or ".bn" in name:
                t.copy_(1 + torch.randn_like(t) * 0.2)
            elif name.endswith("in_proj_weight"):
                t.mul_(3.0)  # sharper attention
        # Make [SEP] win after a while for some images: bias the head towards 102 mildly.
        model.mlp.layers[2].bias[102] += 0.4
    sd = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    torch.save({"model": sd}, os.path.join(OUT, "catr_small.pth"))
    torch.save({"model": sd}, os.path.join(OUT, "catr_small_legacy.pth"), _use_new_zipfile_serialization=False)
    ends = Caption().eval()
    ends.load_state_dict(sd)
    with torch.no_grad():
        ends.mlp.layers[2].bias[102] += 0.1
    torch.save({"model": {k: v.contiguous() for k, v in ends.state_dict().items()}}, os.path.join(OUT, "catr_small_ends.pth"))
    with open(os.path.join(OUT, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab_lines()) + "\n")

    # A basic-block (ResNet-18/34 layout, not dilated: output stride 32) variant.
    basic = Caption(blocks=(2, 1, 1, 1), basic=True, dilate=False).eval()
    with torch.no_grad():
        for name, t in basic.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand_like(t))
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn_like(t) * 0.2)
            elif name.endswith("in_proj_weight"):
                t.mul_(3.0)
    torch.save({"model": {k: v.contiguous() for k, v in basic.state_dict().items()}},
               os.path.join(OUT, "catr_small_basic.pth"))

    sizes = {"wide_640x480": (640, 480), "tall_480x640": (480, 640), "square_300x300": (300, 300),
             "odd_550x400": (550, 400), "small_120x90": (120, 90)}
    tensors, meta = {}, {}
    for i, (stem, (w, h)) in enumerate(sizes.items()):
        img = picture(w, h, i + 11)
        img.save(os.path.join(OUT, "images", stem + ".png"))
        img = Image.open(os.path.join(OUT, "images", stem + ".png")).convert("RGB")
        resized = under_max(img)
        x = TF.normalize(TF.to_tensor(resized), (0.5,) * 3, (0.5,) * 3)
        meta[stem] = {"size": list(resized.size), "resized_fnv": fnv1a64(np.asarray(resized).tobytes())}
        for prefix, m in [("", model), ("ends_", ends)]:
            tokens, rows, logits0 = greedy(m, x)
            meta[stem][prefix + "tokens"] = tokens
            tensors[f"{prefix}attn.{stem}"] = rows
            if not prefix:
                tensors[f"logits0.{stem}"] = logits0
            print(stem, prefix, resized.size, len(tokens), "tokens", "(ended)" if len(rows) > len(tokens) else "")
        if stem == "wide_640x480":
            tokens, rows, _ = greedy(basic, x)
            meta[stem]["basic_tokens"] = tokens
            tensors[f"basic_attn.{stem}"] = rows
            print(stem, "basic", len(tokens), "tokens", rows.shape)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(OUT, "expected.safetensors"))


if __name__ == "__main__":
    main()
