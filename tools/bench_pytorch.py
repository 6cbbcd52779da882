#!/usr/bin/env python3
"""Reference side of `cargo xtask bench`: the same workloads as crates/cli/examples/bench.rs
(timm vit_small_patch16_384, 37 classes, CPU threads = all cores, or the GPU with
BENCH_TORCH_DEVICE=cuda), one JSON object per line; BENCH_ONLY (comma-separated workload
names) runs a subset. Needs torch; without timm (the borrowed GPU machines have none) the ViT
is the same architecture written below in plain PyTorch.

BENCH_VARIANT picks the reference:
  fp32  PyTorch eager in float32 (the default);
  bf16  PyTorch eager under torch.autocast(device, dtype=torch.bfloat16), inference and the
        training step (master weights and the optimizer stay float32);
  onnx  ONNX Runtime (CPU execution provider, float32, all optimisations) on the ViT exported
        by torch.onnx from the same model, inference rows only.
A variant whose packages are missing exits with status 3 and the reason on stderr."""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

try:
    import timm
except ImportError:
    timm = None

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
VARIANT = os.environ.get("BENCH_VARIANT", "fp32")
DEVICE = os.environ.get("BENCH_TORCH_DEVICE", "cpu")
ONLY = os.environ.get("BENCH_ONLY")


def wanted(workload):
    return ONLY is None or workload in ONLY.split(",")


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_time(run):
    run()
    sync()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def report(workload, images, seconds):
    print(json.dumps({"workload": workload, "unit": "images/s", "value": images / seconds}), flush=True)


def caption_127():
    """A 127-token greedy caption of a 299x224 input by the full-size CATR v3 (random weights;
    the architecture of tools/gen_catr_fixtures.py) with the encoder run once and a key/value
    cache in the decoder, as gaze decodes: every step runs, whatever token it picks."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gen_catr_fixtures import Caption, sine_pos

    torch.manual_seed(0)
    model = Caption(blocks=(3, 4, 23, 3), base=64, d=256, heads=8, ffn=2048, enc=6, dec=6, vocab=30522).eval()
    model = model.to(DEVICE)
    x = torch.randn(1, 3, 224, 299, device=DEVICE)
    tf = model.transformer

    def project(attn, x, part):
        d = x.shape[-1]
        return F.linear(x, attn.in_proj_weight[part * d:(part + 1) * d], attn.in_proj_bias[part * d:(part + 1) * d])

    def attend(attn, q, k, v):
        # q [1, d], k/v [n, d] -> [1, d] after out_proj
        heads, d = attn.num_heads, q.shape[-1]
        q, k, v = (t.view(-1, heads, d // heads).transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(-1, d)
        return attn.out_proj(out)

    def run():
        with torch.no_grad():
            feat = model.backbone[0].body(x)
            _, _, hf, wf = feat.shape
            src = model.input_proj(feat).flatten(2)[0].T  # [hw, d]
            pos = sine_pos(hf, wf, src.shape[-1]).flatten(1).T.to(DEVICE)
            h = src[:, None]
            for layer in tf.encoder.layers:
                h = layer(h, pos[:, None])
            memory = tf.encoder.norm(h)[:, 0]
            cross = [(project(l.multihead_attn, memory + pos, 1), project(l.multihead_attn, memory, 2))
                     for l in tf.decoder.layers]
            cache = [([], []) for _ in tf.decoder.layers]
            emb = tf.embeddings
            token = 101
            for step in range(127):
                qpos = emb.position_embeddings.weight[step:step + 1]
                t = emb.LayerNorm(emb.word_embeddings.weight[token:token + 1] + qpos)
                for layer, (ks, vs), (ck, cv) in zip(tf.decoder.layers, cache, cross):
                    h = layer.norm1(t)
                    ks.append(project(layer.self_attn, h + qpos, 1))
                    vs.append(project(layer.self_attn, h, 2))
                    t = t + attend(layer.self_attn, project(layer.self_attn, h + qpos, 0), torch.cat(ks), torch.cat(vs))
                    h = layer.norm2(t)
                    t = t + attend(layer.multihead_attn, project(layer.multihead_attn, h + qpos, 0), ck, cv)
                    t = t + layer.linear2(F.relu(layer.linear1(layer.norm3(t))))
                token = int(model.mlp(tf.decoder.norm(t)).argmax())

    print(json.dumps({"workload": "caption_127", "unit": "s", "value": median_time(run)}), flush=True)


class Block(torch.nn.Module):
    """timm's pre-norm ViT block with fused attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = torch.nn.Linear(dim, 4 * dim)
        self.fc2 = torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(attn)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PlainVit(torch.nn.Module):
    """vit_small_patch16_384 without timm: the same layers and so the same work."""

    def __init__(self, classes=37, dim=384, depth=12, heads=6, grid=24):
        super().__init__()
        self.patch_embed = torch.nn.Conv2d(3, dim, 16, 16)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = torch.nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.blocks = torch.nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim, eps=1e-6)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def onnx_session(model):
    """An ONNX Runtime session of `model` exported with a dynamic batch."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed", file=sys.stderr)
        sys.exit(3)
    import tempfile

    path = os.path.join(tempfile.mkdtemp(prefix="gaze-bench-onnx-"), "vit.onnx")
    x = torch.randn(1, 3, 384, 384)
    torch.onnx.export(model, (x,), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def autocast():
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=VARIANT == "bf16")


def main():
    if VARIANT not in ("fp32", "bf16", "onnx"):
        sys.exit(f"unknown BENCH_VARIANT {VARIANT}: fp32, bf16 or onnx")
    torch.manual_seed(0)
    if timm is not None:
        model = timm.create_model("vit_small_patch16_384", num_classes=37)
    else:
        model = PlainVit()
    model = model.eval().to(DEVICE)
    infer = [b for b in (1, 8) if wanted(f"vit_infer_b{b}")]
    if VARIANT == "onnx":
        session = onnx_session(model) if infer else None
        for batch in infer:
            x = torch.randn(batch, 3, 384, 384).numpy()
            report(f"vit_infer_b{batch}", batch, median_time(lambda: session.run(None, {"x": x})))
        return
    with torch.no_grad(), autocast():
        for batch in infer:
            x = torch.randn(batch, 3, 384, 384, device=DEVICE)
            report(f"vit_infer_b{batch}", batch, median_time(lambda: model(x)))
    if wanted("vit_train_b8"):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
        x, y = torch.randn(8, 3, 384, 384, device=DEVICE), torch.arange(8, device=DEVICE)

        def step():
            opt.zero_grad()
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        report("vit_train_b8", 8, median_time(step))
    if wanted("caption_127") and VARIANT == "fp32":
        caption_127()
    vit = "timm" if timm is not None else "plain PyTorch (no timm)"
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "vit": vit}), file=sys.stderr)


if __name__ == "__main__":
    main()
