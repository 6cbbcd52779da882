#!/usr/bin/env python3
"""PyTorch side of `cargo xtask bench`: the same workloads as crates/cli/examples/bench.rs
(timm vit_small_patch16_384, 37 classes, fp32, CPU threads = all cores, or the GPU with
BENCH_TORCH_DEVICE=cuda), one JSON object per line; BENCH_ONLY (comma-separated workload
names) runs a subset. Needs torch and timm."""
import json
import os
import sys
import time

import timm
import torch
import torch.nn.functional as F

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
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


def main():
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_384", num_classes=37).eval().to(DEVICE)
    with torch.no_grad():
        for batch in (1, 8):
            if wanted(f"vit_infer_b{batch}"):
                x = torch.randn(batch, 3, 384, 384, device=DEVICE)
                report(f"vit_infer_b{batch}", batch, median_time(lambda: model(x)))
    if wanted("vit_train_b8"):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
        x, y = torch.randn(8, 3, 384, 384, device=DEVICE), torch.arange(8, device=DEVICE)

        def step():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        report("vit_train_b8", 8, median_time(step))
    if wanted("caption_127"):
        caption_127()
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads()}), file=sys.stderr)


if __name__ == "__main__":
    main()
