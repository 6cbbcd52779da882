"""Writes the f16, bf16 and f64 copies of the f32 test checkpoints that gaze must convert on load.

Standard library only: a torch checkpoint is a zip whose pickle names each storage's type
(`torch.FloatStorage`) and whose `data/N` entries hold the raw values, so a copy in another
dtype renames the type and rewrites the values. bf16 is rounded to nearest even, as torch does.

    python3 tools/gen_dtype_fixtures.py
"""

import json
import struct
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "crates/vit/tests/fixtures"
CATR = ROOT / "crates/caption/tests/fixtures"

STORAGE = {"F16": b"HalfStorage", "BF16": b"BFloat16Storage", "F64": b"DoubleStorage"}


def floats(raw):
    return struct.unpack(f"<{len(raw) // 4}f", raw)


def bf16_bits(value):
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def convert(raw, dtype):
    values = floats(raw)
    if dtype == "F16":
        return struct.pack(f"<{len(values)}e", *values)
    if dtype == "F64":
        return struct.pack(f"<{len(values)}d", *values)
    return struct.pack(f"<{len(values)}H", *(bf16_bits(v) for v in values))


def pth(source, target, dtype):
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"torch\nFloatStorage\n") == 1, "expected one memoised FloatStorage"
                data = data.replace(b"torch\nFloatStorage\n", b"torch\n" + STORAGE[dtype] + b"\n")
            elif "/data/" in info.filename:
                data = convert(data, dtype)
            zout.writestr(info.filename, data)


def safetensors(source, target, dtype):
    raw = source.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    body = raw[8 + length :]
    out_header, chunks, offset = {}, [], 0
    for name in sorted(k for k in header if k != "__metadata__"):
        entry = header[name]
        start, end = entry["data_offsets"]
        data = convert(body[start:end], dtype)
        out_header[name] = {"dtype": dtype, "shape": entry["shape"], "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    text = json.dumps(out_header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text.encode() + b"".join(chunks))


if __name__ == "__main__":
    for dtype in ("F16", "BF16", "F64"):
        pth(VIT / "reduced.pth", VIT / f"reduced_{dtype.lower()}.pth", dtype)
        safetensors(VIT / "reduced.safetensors", VIT / f"reduced_{dtype.lower()}.safetensors", dtype)
    pth(CATR / "catr_small.pth", CATR / "catr_small_bf16.pth", "BF16")
    print("wrote the f16, bf16 and f64 fixtures")
