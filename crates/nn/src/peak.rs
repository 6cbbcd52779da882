//! The machine's fp32 limit: independent fused multiply-add chains in the widest vector
//! registers the CPU has, on every core at once, timed. The bench reports each workload's
//! share of it.

use std::time::Instant;

/// Measured fp32 FMA throughput of all cores together, and the instructions that gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub gflops: f64,
    pub threads: usize,
    /// `avx512`, `avx2` or `scalar`.
    pub isa: &'static str,
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

/// Times `iterations` rounds on `threads` threads at once; the best of `tries`.
fn measure(threads: usize, iterations: u64, tries: usize) -> f64 {
    let (kernel, lanes, _) = widest();
    let flops = (threads as u64 * iterations * (CHAINS * lanes * 2) as u64) as f64;
    (0..tries)
        .map(|_| {
            let started = Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| std::hint::black_box(kernel(std::hint::black_box(iterations))));
                }
            });
            flops / started.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The fp32 FMA peak of `threads` cores (all of them when `None`), measured for about a
/// quarter of a second.
pub fn fma_peak(threads: Option<usize>) -> Peak {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // Size the run from a short probe so that each try lasts about 80 ms.
    let probe = measure(threads, 200_000, 1);
    let (_, lanes, isa) = widest();
    let per_iteration = (threads * CHAINS * lanes * 2) as f64;
    let iterations = ((probe * 1e9 * 0.08) / per_iteration).max(10_000.0) as u64;
    Peak {
        gflops: measure(threads, iterations, 3),
        threads,
        isa,
    }
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
}
