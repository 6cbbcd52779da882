//! The machine's fp32 limit: independent fused multiply-add chains in the widest vector
//! registers the CPU has, on every core at once, timed in short slices over a span. The
//! fastest slice is the peak; the span's average is what the machine sustains, which on a
//! shared VM can be up to a quarter lower (docs/benchmarks.md). The bench reports each
//! workload's share of both. Where the CPU has AVX512_BF16, the same for `vdpbf16ps` (the
//! bf16 limit, a multiply-add per pair) and for gaze's bf16 micro-kernel.

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Measured throughput of all cores together, and the instructions that gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// The fastest slice, in GFLOP/s: the limit.
    pub gflops: f64,
    /// The whole span's average, in GFLOP/s: what the machine delivered meanwhile.
    pub sustained_gflops: f64,
    pub threads: usize,
    /// `avx512`, `avx2` or `scalar` for [`fma_peak`]; the kernel for `panel_kernel`.
    pub isa: &'static str,
}

/// Length of one timed slice: long enough that starting the cores together costs little,
/// short enough that a quiet slice is likely on a busy host.
const SLICE: Duration = Duration::from_millis(5);

/// Runs `work` on `threads` threads at once, in lock-step slices, for `span`; returns the
/// fastest slice's and the average slice's seconds.
fn timed_slices(threads: usize, span: Duration, work: &(dyn Fn() + Sync)) -> (f64, f64) {
    let barrier = Barrier::new(threads);
    let stop = AtomicBool::new(false);
    let mut times = Vec::new();
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| {
                loop {
                    barrier.wait();
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    work();
                    barrier.wait();
                }
            });
        }
        let started = Instant::now();
        loop {
            if started.elapsed() >= span && !times.is_empty() {
                stop.store(true, Ordering::Release);
                barrier.wait();
                break;
            }
            let slice = Instant::now();
            barrier.wait();
            work();
            barrier.wait();
            times.push(slice.elapsed().as_secs_f64());
        }
    });
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    (best, times.iter().sum::<f64>() / times.len() as f64)
}

/// Times `calls(n)` (n units of `flop_per_unit` each, per thread) in [`SLICE`]-long slices
/// over `span`: `(peak, sustained)` GFLOP/s of all threads.
fn measure(threads: usize, span: Duration, flop_per_unit: f64, calls: &(dyn Fn(u64) + Sync)) -> (f64, f64) {
    // Size a slice from a short probe.
    let probe = 64;
    let started = Instant::now();
    calls(probe);
    let per_unit = started.elapsed().as_secs_f64() / probe as f64;
    let units = ((SLICE.as_secs_f64() / per_unit.max(1e-12)) as u64).max(1);
    let (best, mean) = timed_slices(threads, span, &|| calls(units));
    let flop = threads as f64 * units as f64 * flop_per_unit / 1e9;
    (flop / best, flop / mean)
}

/// Independent accumulators per thread: enough to cover the FMA latency on two ports.
const CHAINS: usize = 12;

/// `iterations` rounds of [`CHAINS`] FMAs on 16 lanes; returns a value that depends on all of
/// them, so that none is optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for r in acc.iter_mut() {
            *r = _mm512_fmadd_ps(*r, a, b);
        }
    }
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r));
    _mm512_reduce_add_ps(sum)
}

/// [`fma_avx512`] on 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for r in acc.iter_mut() {
            *r = _mm256_fmadd_ps(*r, a, b);
        }
    }
    let sum = acc.iter().fold(_mm256_setzero_ps(), |s, &r| _mm256_add_ps(s, r));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 floats the store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

/// [`fma_avx512`] on one lane, for CPUs without vector FMA.
fn fma_scalar(iterations: u64) -> f32 {
    let mut acc = [1f32; CHAINS];
    for _ in 0..iterations {
        for r in acc.iter_mut() {
            *r = std::hint::black_box(*r).mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// The widest FMA the CPU runs: `(kernel, lanes, name)`.
fn widest() -> (fn(u64) -> f32, usize, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return (|n| unsafe { fma_avx512(n) }, 16, "avx512");
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return (|n| unsafe { fma_avx2(n) }, 8, "avx2");
        }
    }
    (fma_scalar, 1, "scalar")
}

/// [`fma_avx512`] with `vdpbf16ps`: each instruction 16 lanes of two multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_avx512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the transmutes reinterpret 512 bits as 512 bits.
    let (a, b): (__m512bh, __m512bh) = unsafe {
        (
            std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)),
            std::mem::transmute(_mm512_set1_epi32(0x3380_3380)),
        )
    };
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iterations {
        for r in acc.iter_mut() {
            *r = _mm512_dpbf16_ps(*r, a, b);
        }
    }
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, &r| _mm512_add_ps(s, r));
    _mm512_reduce_add_ps(sum)
}

/// The bf16 product peak of `threads` cores: `vdpbf16ps` chains as [`fma_peak`]'s, counting
/// a multiply-add per bf16 pair as two FLOP. `None` without AVX512_BF16.
pub fn bf16_peak(threads: Option<usize>, span: Duration) -> Option<Peak> {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::bf16::cpu_has_avx512_bf16() {
        let threads = thread_count(threads);
        let flop_per_unit = (1000 * CHAINS * 32 * 2) as f64;
        let (gflops, sustained_gflops) = measure(threads, span, flop_per_unit, &|units| {
            // SAFETY: the CPU has AVX512_BF16.
            std::hint::black_box(unsafe { dpbf16_avx512(std::hint::black_box(units * 1000)) });
        });
        return Some(Peak {
            gflops,
            sustained_gflops,
            threads,
            isa: "avx512_bf16",
        });
    }
    let _ = (threads, span);
    None
}

/// Every core when `threads` is `None`.
fn thread_count(threads: Option<usize>) -> usize {
    threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// The fp32 FMA peak of `threads` cores (all of them when `None`), in slices over `span`.
pub fn fma_peak(threads: Option<usize>, span: Duration) -> Peak {
    let threads = thread_count(threads);
    let (kernel, lanes, isa) = widest();
    // A unit is 1000 rounds of the chains.
    let flop_per_unit = (1000 * CHAINS * lanes * 2) as f64;
    let (gflops, sustained_gflops) = measure(threads, span, flop_per_unit, &|units| {
        std::hint::black_box(kernel(std::hint::black_box(units * 1000)));
    });
    Peak {
        gflops,
        sustained_gflops,
        threads,
        isa,
    }
}

/// The linear layers' micro-kernel ([`crate::panels`]) on operands that stay in cache, every
/// core at once: each thread multiplies a `96 x 384` row tile (the rows a task keeps in L2)
/// by four `384 x 16` panels, over and over, as the products of ViT-S do between their
/// loads. Against [`fma_peak`] this is the share of the peak the kernel itself reaches;
/// inside a model its operands also come from L3 and memory (`tools/perf_profile.py` measures
/// that rate). `None` where the linear layers do not run the panels (no AVX2 + FMA, or
/// AVX-512, where `gemm`'s own kernels run).
#[cfg(feature = "flex")]
pub fn panel_kernel(threads: Option<usize>, span: Duration) -> Option<Peak> {
    use crate::panels::Panels;
    use std::mem::MaybeUninit;
    const ROWS: usize = 96;
    const DEPTH: usize = 384;
    const COLUMNS: usize = 64;
    let threads = thread_count(threads);
    let rhs: Vec<f32> = (0..DEPTH * COLUMNS).map(|i| (i % 7) as f32 * 0.01).collect();
    let panels = Panels::pack((&rhs, 1, COLUMNS), [DEPTH, COLUMNS])?;
    let lhs: Vec<f32> = (0..ROWS * DEPTH).map(|i| (i % 5) as f32 * 0.01).collect();
    let flop_per_product = (2 * ROWS * DEPTH * COLUMNS) as f64;
    let (gflops, sustained_gflops) = measure(threads, span, flop_per_product, &|products| {
        let mut dst = vec![MaybeUninit::uninit(); ROWS * COLUMNS];
        for _ in 0..products {
            std::hint::black_box(panels.product(&mut dst, std::hint::black_box(&lhs), None));
        }
    });
    Some(Peak {
        gflops,
        sustained_gflops,
        threads,
        isa: "avx2 panels (6 x 16 tile)",
    })
}

/// [`panel_kernel`] for the bf16 micro-kernel ([`crate::bf16_panels`]): each thread
/// multiplies a `96 x 384` row tile, rounded and packed in every product as in a model, by a
/// `384 x 384` weight (twelve panels), as ViT-S's attention projection does. `None` without
/// AVX512_BF16 (the emulation is not a speed path).
#[cfg(feature = "flex")]
pub fn bf16_kernel(threads: Option<usize>, span: Duration) -> Option<Peak> {
    use crate::bf16_panels::{Bf16Kernel, Bf16Panels};
    use std::mem::MaybeUninit;
    const ROWS: usize = 96;
    const DEPTH: usize = 384;
    const COLUMNS: usize = 384;
    let kernel = Bf16Kernel::detect();
    if kernel == Bf16Kernel::Emulated {
        return None;
    }
    let threads = thread_count(threads);
    let rhs: Vec<f32> = (0..DEPTH * COLUMNS).map(|i| (i % 7) as f32 * 0.01).collect();
    let panels = Bf16Panels::pack((&rhs, 1, COLUMNS), [DEPTH, COLUMNS]);
    let lhs: Vec<f32> = (0..ROWS * DEPTH).map(|i| (i % 5) as f32 * 0.01).collect();
    let flop_per_product = (2 * ROWS * DEPTH * COLUMNS) as f64;
    let (gflops, sustained_gflops) = measure(threads, span, flop_per_product, &|products| {
        let mut dst = vec![MaybeUninit::uninit(); ROWS * COLUMNS];
        for _ in 0..products {
            let lhs = (std::hint::black_box(&lhs[..]), 1, DEPTH);
            std::hint::black_box(panels.product(kernel, &mut dst, lhs, Default::default()));
        }
    });
    Some(Peak {
        gflops,
        sustained_gflops,
        threads,
        isa: "avx512_bf16 panels (12 x 32 tile)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_computes_the_same_chains() {
        // 1.0 * a + b, repeated: each path runs the same recurrence on every lane.
        let mut want = 1f32;
        for _ in 0..1000 {
            want = want.mul_add(0.999_999, 1e-7);
        }
        let (kernel, lanes, isa) = widest();
        let got = kernel(1000);
        let expected = want * (CHAINS * lanes) as f32;
        assert!(
            (got - expected).abs() <= expected * 1e-5,
            "{isa}: {got} vs {expected}"
        );
        assert!((fma_scalar(1000) - want * CHAINS as f32).abs() <= 1e-4);
    }

    #[cfg(feature = "flex")]
    #[test]
    fn the_panel_kernel_is_measured_where_the_linear_layers_run_it() {
        let kernel = panel_kernel(Some(1), Duration::from_millis(50));
        #[cfg(target_arch = "x86_64")]
        let runs_panels = std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && !std::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let runs_panels = false;
        assert_eq!(kernel.is_some(), runs_panels, "{kernel:?}");
        if let Some(kernel) = kernel {
            assert_eq!(kernel.threads, 1);
            assert!(kernel.gflops.is_finite() && kernel.gflops > 0.0, "{kernel:?}");
            assert!(kernel.sustained_gflops <= kernel.gflops, "{kernel:?}");
        }
    }

    #[test]
    fn the_bf16_limits_are_measured_where_the_cpu_has_avx512_bf16() {
        let has = crate::ops::bf16::cpu_has_avx512_bf16();
        let peak = bf16_peak(Some(1), Duration::from_millis(50));
        assert_eq!(peak.is_some(), has, "{peak:?}");
        #[cfg(feature = "flex")]
        {
            let kernel = bf16_kernel(Some(1), Duration::from_millis(50));
            assert_eq!(kernel.is_some(), has, "{kernel:?}");
        }
        if let Some(peak) = peak {
            // The chains add 1.0 * 2^-24 twice per step to lanes that start at 1.0: the sum
            // stays 1.0 in each of the 16 lanes of each chain.
            // SAFETY: the CPU has AVX512_BF16.
            assert_eq!(unsafe { dpbf16_avx512(10) }, (CHAINS * 16) as f32);
            assert!(peak.gflops.is_finite() && peak.gflops > 0.0, "{peak:?}");
        }
    }

    #[test]
    fn slices_run_on_every_thread_in_lock_step() {
        use std::sync::atomic::AtomicUsize;
        let calls = AtomicUsize::new(0);
        let (best, mean) = timed_slices(3, Duration::from_millis(20), &|| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        });
        let calls = calls.into_inner();
        assert!(calls >= 3 && calls % 3 == 0, "{calls} calls");
        assert!(best >= 0.002 && mean >= best, "best {best}, mean {mean}");
    }

    #[test]
    fn the_peak_is_the_fastest_slice() {
        let peak = fma_peak(Some(1), Duration::from_millis(50));
        assert_eq!(peak.threads, 1);
        assert!(peak.gflops.is_finite() && peak.gflops > 0.0, "{peak:?}");
        assert!(peak.sustained_gflops <= peak.gflops, "{peak:?}");
    }
}
