#!/usr/bin/env bash
# gaze's wgpu backend on a borrowed GPU machine: one NVIDIA GPU, x86-64, no internet, no Rust
# toolchain, a PyTorch of its own, 64 MiB of files in and 8 files out. Two halves:
#
#   tools/gpu-check.sh prepare       (here) builds the wgpu release binaries and the parity test
#                                    executables, strips and compresses them, and downloads the
#                                    Vulkan loader and GL dispatch .debs, into
#                                    target/gpu-check/carry (the one path to carry over);
#   OUT=DIR tools/gpu-check.sh run   (there, in the repository root) unpacks them, runs the
#                                    wgpu parity tests, the bench beside PyTorch CUDA eager and
#                                    one epoch of the course recipe on synthetic 384 px images,
#                                    and appends a JSON line to DIR/steps.jsonl after every step.
#
# Dry run on this machine's software Vulkan device (lavapipe), scaled down:
#   tools/gpu-check.sh prepare
#   OUT=/tmp/gpu-check GPU_CHECK_IMAGES=32 GPU_CHECK_SIZE=64 GPU_CHECK_REPEATS=1 \
#       GPU_CHECK_TIME_SCALE=10 BENCH_ONLY=vit_infer_b1 tools/gpu-check.sh run
#
# Settings (run): GPU_CHECK_IMAGES (3680) and GPU_CHECK_SIZE (384) for the epoch,
# GPU_CHECK_REPEATS (5) and BENCH_ONLY (all workloads) for the bench, GPU_CHECK_TIME_SCALE
# (multiplies every step's time limit; 1 keeps the run under 5 minutes), GPU_CHECK_PYTHON
# (python3).
set -uo pipefail
cd "$(dirname "$0")/.."
carry=target/gpu-check/carry

prepare() {
    set -e
    rm -rf "$carry"
    mkdir -p "$carry/bin"
    # One feature set for the binaries and the tests, so burn is built once.
    cargo build --release -p gaze-cli --no-default-features --features flex,wgpu --bin gaze --example bench
    cp target/release/gaze target/release/examples/bench "$carry/bin/"
    cargo test --release --no-run -p gaze-vit -p gaze-caption --test parity --test train \
        --message-format=json >target/gpu-check/tests.json
    # name of the copy <- the test executable cargo reports for crate:target
    python3 - target/gpu-check/tests.json "$carry/bin" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        crate = m["package_id"].split("#")[0].rsplit("/", 1)[-1].replace("gaze-", "")
        shutil.copy(m["executable"], f"{sys.argv[2]}/{crate}-{m['target']['name']}")
PY
    strip "$carry"/bin/*
    ls -l "$carry/bin"
    tar -cf - -C "$carry" bin | xz -T2 -9 --lzma2=preset=9,dict=256MiB >"$carry/gaze-gpu.tar.xz"
    rm -r "$carry/bin"
    # The Vulkan loader and the GL dispatch libraries NVIDIA's Vulkan driver links against, for
    # a machine that lacks them.
    mkdir -p "$carry/debs"
    (cd "$carry/debs" && apt-get download -q libvulkan1 libglvnd0 libegl1 libglx0 libgl1 2>&1 | grep -v '^W: Download is performed unsandboxed')
    du -sh "$carry" "$carry"/* "$carry"/debs/*
    local bytes
    bytes=$(du -sb "$carry" | cut -f1)
    [ "$bytes" -lt $((64 * 1024 * 1024)) ] || { echo "$carry is over 64 MiB" >&2; exit 1; }
}

# JSON string of $1.
json_str() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/ }
    s=${s//$'\r'/}
    printf '"%s"' "$s"
}

started=$(date +%s)
# record NAME STATUS SECONDS DETAIL: one line of steps.jsonl.
record() {
    printf '{"step": %s, "status": %s, "seconds": %s, "elapsed": %s, "detail": %s}\n' \
        "$(json_str "$1")" "$(json_str "$2")" "$3" "$(($(date +%s) - started))" "$(json_str "$4")" \
        >>"$OUT/steps.jsonl"
    echo "== $1: $2 ($3 s) ${4:0:300}" >&2
}

# timed NAME LIMIT LOG COMMAND...: runs COMMAND under a time limit, appending its output to
# LOG; sets $status (ok, failed (exit N) or timed out) and $seconds.
timed() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0 rc
    t0=$(date +%s.%N)
    echo "== $name: $*" >>"$log"
    timeout "$(awk -v l="$limit" -v s="$scale" 'BEGIN{print int(l*s)}')" "$@" >>"$log" 2>&1
    rc=$?
    seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    case $rc in
        0) status=ok ;;
        124) status="timed out" ;;
        *) status="failed (exit $rc)" ;;
    esac
}

run() {
    : "${OUT:?set OUT to the folder whose files come back}"
    mkdir -p "$OUT"
    : >"$OUT/steps.jsonl"
    scale=${GPU_CHECK_TIME_SCALE:-1}
    local images=${GPU_CHECK_IMAGES:-3680} size=${GPU_CHECK_SIZE:-384} repeats=${GPU_CHECK_REPEATS:-5}
    local python=${GPU_CHECK_PYTHON:-python3} root work setup=$OUT/setup.log
    root=$(pwd)
    work=$(mktemp -d)
    # The Vulkan loader complains on stderr without a runtime folder.
    export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$work/xdg}"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"

    local gpu cpu torch
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -3)
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)
    torch=$("$python" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")' 2>&1 | tail -1)
    record machine ok 0 "gpu: ${gpu:-none (no nvidia-smi answer)}; cpu: $cpu ($(nproc) cores); torch: $torch; $(uname -r)"

    timed unpack 60 "$setup" tar -xJf "$carry/gaze-gpu.tar.xz" -C "$work"
    local detail="binaries: $(ls "$work/bin" | xargs)"
    if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
        mkdir -p "$work/root"
        for deb in "$carry"/debs/*.deb; do
            if command -v dpkg-deb >/dev/null; then
                dpkg-deb -x "$deb" "$work/root"
            else
                (cd "$work" && ar x "$deb" data.tar.xz && tar -xJf data.tar.xz -C "$work/root" && rm data.tar.xz)
            fi
        done >>"$setup" 2>&1
        export LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        detail+="; Vulkan loader from the carried .debs"
    else
        detail+="; the machine's Vulkan loader"
    fi
    # NVIDIA's container runtime may mount the driver without its Vulkan manifest.
    if ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1 &&
        ldconfig -p | grep -q 'libGLX_nvidia\.so\.0'; then
        printf '{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.3"}}\n' \
            >"$work/nvidia_icd.json"
        export VK_DRIVER_FILES="$work/nvidia_icd.json" VK_ICD_FILENAMES="$work/nvidia_icd.json"
        detail+="; written NVIDIA Vulkan manifest"
    fi
    record unpack "$status" "$seconds" "$detail"
    [ "$status" = ok ] || return 1
    local bin=$work/bin
    "$bin/gaze" --version >>"$setup" 2>&1

    # The wgpu parity tests; CI=true turns a missing adapter into a failure.
    local tests=$OUT/tests.log exe crate
    for exe in vit-parity vit-train caption-parity; do
        crate=${exe%%-*}
        [ "$crate" = caption ] || crate=vit
        : >"$work/one.log"
        CI=true CARGO_MANIFEST_DIR="$root/crates/$crate" \
            timed "test $exe" 60 "$work/one.log" "$bin/$exe" wgpu_ --nocapture --test-threads 1
        cat "$work/one.log" >>"$tests"
        record "test $exe" "$status" "$seconds" \
            "$(grep -E '^(wgpu adapter|max abs diff|.*: max abs diff|test .* \.\.\. |test result)' "$work/one.log" | head -8)"
    done
    if [ -n "$gpu" ] && grep -q 'wgpu adapter:.*software' "$tests"; then
        record adapter "failed" 0 "a GPU is present but wgpu ran on a software adapter"
    fi

    # The bench's workloads on wgpu, then PyTorch's on CUDA (eager, fp32).
    BENCH_DEVICE=wgpu BENCH_REPEATS=$repeats timed "bench gaze wgpu" 90 "$work/bench.out" "$bin/bench"
    grep '^{' "$work/bench.out" >"$OUT/bench-gaze.jsonl"
    record "bench gaze wgpu" "$status" "$seconds" "$(cat "$OUT/bench-gaze.jsonl")"
    if "$python" -c 'import torch; assert torch.cuda.is_available()' >>"$setup" 2>&1; then
        BENCH_TORCH_DEVICE=cuda BENCH_REPEATS=$repeats \
            timed "bench pytorch cuda" 90 "$work/torch.out" "$python" tools/bench_pytorch.py
        grep '^{' "$work/torch.out" >"$OUT/bench-torch.jsonl"
        record "bench pytorch cuda" "$status" "$seconds" "$(cat "$OUT/bench-torch.jsonl")"
    else
        record "bench pytorch cuda" skipped 0 "$python has no torch with CUDA: $torch"
    fi

    # One epoch of the course recipe (configs/vit_s16_384_pets.toml: batch 16, SGD) from scratch
    # on synthetic images (384 px unless GPU_CHECK_SIZE says otherwise), 18 classes.
    local train=$OUT/train.log
    timed "synth $images images" 60 "$train" "$bin/gaze" synth --out "$work/synth" \
        --classes 18 --train "$images" --val 16 --size "$size"
    record "synth $images images" "$status" "$seconds" ""
    timed "train one epoch wgpu" 150 "$train" "$bin/gaze" train --config configs/vit_s16_384_pets.toml \
        --data "$work/synth" --out "$work/run" --device wgpu \
        model.init=scratch model.num_classes=18 model.img_size="$size" schedule.epochs=1 \
        run.checkpoint_every=100000
    record "train one epoch wgpu" "$status" "$seconds" \
        "$images images of $size px; $(awk -v n="$images" -v s="$seconds" 'BEGIN{printf "%.1f images/s overall", n/s}'); $(tail -2 "$work/run/metrics.csv" 2>/dev/null | xargs)"

    record "tch-cuda" skipped 0 "burn-tch 0.22 builds against libtorch 2.9.0; this machine's torch is $torch, and no tch binary built against it travels with the tree (see README, Backends)"
    rm -rf "$work"
    record done ok "$(($(date +%s) - started))" "all steps ran"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *)
        sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
esac
