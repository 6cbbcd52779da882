//! Workloads for `cargo xtask bench`: ViT-S/16-384 inference (batch 1 and 8), one SGD
//! training step (batch 8), and a 127-token CATR v3 caption of a 299x224 input, each the
//! median of repeated runs after a warm-up; and `fma_peak`, the machine's measured fp32 FMA
//! throughput ([`gaze_nn::peak`]), with `panel_kernel`, the linear layers' micro-kernel on
//! cache-resident operands, where it runs, and on a CPU with AVX512_BF16 `bf16_peak` and
//! `bf16_kernel`, the same two for bf16 products. Prints one JSON object per line: `{"workload", "unit",
//! "value"}` (images/s, or seconds for the caption, or GFLOP/s for the peak); the ViT rows
//! add `flop_per_image` (the products gaze runs, its last block for the class token alone)
//! and `reference_flop_per_image` (timm's, every token in every block).
//!
//! `BENCH_DEVICE` picks the device (see `gaze predict --help`; default `auto`),
//! `BENCH_PRECISION` the ViT's products (`fp32`, the default, or `bf16`),
//! `BENCH_REPEATS` the number of timed runs (default 5) and `BENCH_ONLY` a comma-separated
//! subset of the workloads.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use gaze_caption::CatrConfig;
use gaze_nn::ops::Precision;
use gaze_nn::parse_device;
use gaze_train::{OptimSection, OptimizerKind, build_optimizer};
use gaze_vit::VitConfig;
use gaze_vit::train::cross_entropy;

#[path = "../src/allocator.rs"]
mod allocator;

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn time(repeats: usize, mut run: impl FnMut()) -> f64 {
    run();
    median(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// One ViT row: images per second, and the floating-point operations per image of gaze's
/// forward (or training step) and of timm's.
fn report(workload: &str, images: usize, seconds: f64, (flop, reference_flop): (f64, f64)) {
    println!(
        "{{\"workload\": \"{workload}\", \"unit\": \"images/s\", \"value\": {:.4}, \"flop_per_image\": {flop:.0}, \"reference_flop_per_image\": {reference_flop:.0}}}",
        images as f64 / seconds
    );
}

/// Greedy decoding of the full-size v3 model (random weights, seeded) on a 299x224 input,
/// the size a 640x480 picture becomes. Random weights may end a caption early, so the time
/// is scaled to 127 tokens (decoding cost is close to linear in the tokens).
fn caption_127(device: &burn::tensor::Device, repeats: usize) {
    let draws = gaze_nn::device::seeded(device, 0);
    let model = CatrConfig::v3().init(device);
    let x = Tensor::<4>::random([1, 3, 224, 299], Distribution::Normal(0.0, 1.0), device);
    drop(draws);
    let captioner = model.captioner();
    let mut tokens = 0;
    let seconds = time(repeats, || {
        tokens = captioner.caption(x.clone(), 127).tokens.len()
    });
    println!(
        "{{\"workload\": \"caption_127\", \"unit\": \"s\", \"value\": {:.4}, \"tokens\": {tokens}}}",
        seconds * 127.0 / tokens.max(1) as f64
    );
}

fn main() {
    // SAFETY: the first thing the program does, before any thread starts.
    unsafe { gaze_nn::device::quiet_vulkan_loader() };
    allocator::keep_freed_memory();
    let device =
        parse_device(&std::env::var("BENCH_DEVICE").unwrap_or_else(|_| "auto".into())).expect("device");
    let repeats: usize = std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // BENCH_ONLY=vit_infer_b1,caption_127 runs a subset (for profiling).
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |workload: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == workload))
    };
    if wanted("fma_peak") {
        // Ten seconds each: the sustained rate over a span as long as a workload's runs.
        let span = std::time::Duration::from_secs(10);
        let kernel = gaze_nn::peak::panel_kernel(None, span).map(|k| ("panel_kernel", k));
        let bf16 = gaze_nn::peak::bf16_peak(None, span).map(|k| ("bf16_peak", k));
        let bf16_kernel = gaze_nn::peak::bf16_kernel(None, span).map(|k| ("bf16_kernel", k));
        for (workload, peak) in [("fma_peak", gaze_nn::peak::fma_peak(None, span))]
            .into_iter()
            .chain(kernel)
            .chain(bf16)
            .chain(bf16_kernel)
        {
            println!(
                "{{\"workload\": \"{workload}\", \"unit\": \"GFLOP/s\", \"value\": {:.1}, \"sustained\": {:.1}, \"isa\": \"{}\", \"threads\": {}}}",
                peak.gflops, peak.sustained_gflops, peak.isa, peak.threads
            );
        }
    }
    let precision: Precision = std::env::var("BENCH_PRECISION")
        .unwrap_or_else(|_| "fp32".into())
        .parse()
        .expect("BENCH_PRECISION");
    if let Some(notice) = precision
        .prepare(&device)
        .expect("BENCH_PRECISION on BENCH_DEVICE")
    {
        eprintln!("{notice}");
    }
    let config = VitConfig::new().with_num_classes(37);
    let model = config.init(&device).with_precision(precision);
    for batch in [1usize, 8] {
        if !wanted(&format!("vit_infer_b{batch}")) {
            continue;
        }
        let x = Tensor::<4>::random([batch, 3, 384, 384], Distribution::Normal(0.0, 1.0), &device);
        let seconds = time(repeats, || {
            let _ = model.forward(x.clone()).into_data();
        });
        let flops = (config.forward_flops(true), config.forward_flops(false));
        report(&format!("vit_infer_b{batch}"), batch, seconds, flops);
    }
    if wanted("vit_train_b8") {
        train_step(&config, precision, &device, repeats);
    }
    if wanted("caption_127") {
        caption_127(&device, repeats);
    }
}

/// One SGD step (momentum 0.9) of ViT-S/16-384 on a batch of 8.
fn train_step(config: &VitConfig, precision: Precision, device: &burn::tensor::Device, repeats: usize) {
    let train_device = device.clone().autodiff();
    let mut model = config.init(&train_device).with_precision(precision);
    let optim_config = OptimSection {
        name: OptimizerKind::Sgd,
        lr: 3e-4,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-8,
        grad_accum: 1,
        clip_grad_norm: None,
        label_smoothing: 0.0,
    };
    let mut optim = build_optimizer(&optim_config);
    let x = Tensor::<4>::random([8, 3, 384, 384], Distribution::Normal(0.0, 1.0), &train_device);
    let labels: Vec<i64> = (0..8).collect();
    let seconds = time(repeats, || {
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [8]), &train_device);
        let (loss, _) = cross_entropy(model.forward(x.clone()), y, 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-4, model.clone(), grads);
        let _ = model.head.bias.as_ref().map(|b| b.val().into_data());
    });
    let rest_of_last_block = config.forward_flops(false) - config.forward_flops(true);
    let timm_training = config.training_flops() + 3.0 * rest_of_last_block;
    report(
        "vit_train_b8",
        8,
        seconds,
        (config.training_flops(), timm_training),
    );
}
