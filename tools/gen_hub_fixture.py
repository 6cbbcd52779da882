#!/usr/bin/env python3
"""Writes crates/vit/tests/fixtures/hub/: a Hub-style folder written by timm itself, and checks
that a gaze run folder loads back in timm.

    ~/pyref/bin/python tools/gen_hub_fixture.py            # write the fixture
    ~/pyref/bin/python tools/gen_hub_fixture.py RUN_DIR    # load RUN_DIR in timm, strict=True

The fixture (a few hundred KiB, committed; CI needs no Python):
  model.safetensors, config.json   timm's save_for_hf of a reduced vit_tiny_patch16_224
                                   (64 px, dim 48, depth 2, 3 heads, 4 named classes,
                                   ImageNet mean/std, crop_pct 0.875), biases and norms
                                   perturbed as in gen_vit_fixtures.py, patch and head
                                   weights scaled up so that images differ
  expected.json                    timm's logits for the rgb_* PNGs of ../images, through
                                   timm's own eval transform (resolve_data_config)

The check loads RUN_DIR/config.json's architecture with its model_args and num_classes,
then RUN_DIR/best.safetensors with load_state_dict(strict=True), and prints the
parameter count and the label names.
"""
import json
import sys
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.data import create_transform, resolve_data_config
from timm.models import _hub

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_vit_fixtures import perturb  # noqa: E402

FIXTURES = Path(__file__).resolve().parent.parent / "crates/vit/tests/fixtures"
LABELS = ["Abyssinian", "Bengal", "american_bulldog", "beagle"]
MODEL_ARGS = {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}
OVERLAY = {
    "input_size": (3, 64, 64),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
}


def write_fixture():
    torch.manual_seed(7)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=len(LABELS),
        pretrained_cfg_overlay=OVERLAY, **MODEL_ARGS)
    perturb(model)
    with torch.no_grad():
        model.patch_embed.proj.weight *= 20.0
        model.head.weight *= 30.0
    model.eval()
    out = FIXTURES / "hub"
    out.mkdir(parents=True, exist_ok=True)
    _hub.save_for_hf(model, out, model_config={"label_names": LABELS}, model_args=MODEL_ARGS,
                     safe_serialization=True)
    transform = create_transform(**resolve_data_config({}, model=model))
    expected = {}
    for path in sorted((FIXTURES / "images").glob("rgb_*.png")):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            logits = model(transform(image).unsqueeze(0))[0]
        expected[path.name] = [float(v) for v in logits]
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def check_run(run):
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    model = timm.create_model(
        config["architecture"], pretrained=False, num_classes=config["num_classes"],
        **config.get("model_args", {}))
    state = load_file(run / "best.safetensors")
    model.load_state_dict(state, strict=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"{run}: {config['architecture']} {config.get('model_args', {})} loads in timm "
          f"{timm.__version__} with strict=True ({params} parameters, {len(state)} tensors); "
          f"label_names {config.get('label_names')}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        check_run(sys.argv[1])
    else:
        write_fixture()
