//! Element-wise and row kernels on `f32` slices (softmax, GELU, layer norm, affine), written
//! so that they vectorise, and compiled for AVX-512, AVX2 + FMA and the baseline, the best
//! the CPU has chosen at run time.

use std::mem::MaybeUninit;

use crate::ops::bf16::round_to_bf16_scalar;

/// Softmax of one row in place, in passes that each vectorise.
#[inline(always)]
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = fold_lanes(row, f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
    // eˣ written and summed in one pass over the row.
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *lane += *x;
        }
    }
    let tail = chunks.into_remainder().iter_mut().fold(0.0, |sum, x| {
        *x = exp(*x - max);
        sum + *x
    });
    let inv_sum = 1.0 / lanes.into_iter().fold(tail, |sum, x| sum + x);
    row.iter_mut().for_each(|x| *x *= inv_sum);
}

/// Interleaved accumulators of a reduction: two AVX2 registers or one AVX-512 register.
pub(crate) const LANES: usize = 16;

/// A reduction over [`LANES`] interleaved accumulators: the compiler may not reorder a float
/// fold by itself, and a single accumulator never vectorises.
#[inline(always)]
pub(crate) fn fold_lanes(xs: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(init, |acc, &x| f(acc, x));
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = f(*lane, x);
        }
    }
    lanes.into_iter().fold(tail, &f)
}

/// `0.5 x (1 + erf(x / √2))`.
#[inline(always)]
pub(crate) fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf as the odd rational function `x P(x²) / Q(x²)` on `[-4, 4]`, where f32 erf reaches ±1
/// (coefficients of Eigen's and XLA's `erf` for float; largest error 4.2e-7, measured against
/// Python's `math.erf` on 200,001 points in `[-6, 6]`). No branches, so loops vectorise.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// eˣ by Cephes' `expf`: `x = n ln2 + r` with `|r| ≤ ln2 / 2`, a degree-6 polynomial for eʳ,
/// and `2ⁿ` written into the exponent bits (relative error about 2e-7; 0 below -87.3, where
/// f32 stops being normal). Selects instead of branches, so loops vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOWEST: f32 = -87.336_54;
    let clamped = x.clamp(LOWEST, 88.376_26);
    // Round to nearest by the 1.5 * 2^23 trick: `round()` does not vectorise everywhere.
    const ROUND: f32 = 12_582_912.0;
    let rounded = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = p * r + c;
    }
    let er = p * r * r + r + 1.0;
    // The low mantissa bits of `rounded` hold n in two's complement (|n| < 2^22); shifting
    // n + 127 into the exponent field builds 2ⁿ with integer ops only (a float-to-int cast
    // would not vectorise). n is in [-126, 127], so the exponent is a normal one.
    let two_n = f32::from_bits(rounded.to_bits().wrapping_add(127) << 23);
    if x < LOWEST { 0.0 } else { er * two_n }
}

/// Defines `fn $name(args)` whose body is compiled three times: for AVX-512, for AVX2 + FMA,
/// and for the target's baseline, the first the CPU has being taken (checked at run time:
/// without the 512-bit build an AVX-512 CPU would run the AVX2 one). The body's helpers must be
/// `#[inline(always)]` (so they are compiled into each copy) and called directly, not passed
/// as closures or function items, which may be compiled once, for the baseline.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        pub(crate) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the CPU has the features `avx512` is compiled for (AVX-512F
                    // implies AVX2 and FMA).
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// `x * scale + shift` for every element, then ReLU if `relu`, in place.
    fn affine(xs: &mut [f32], scale: f32, shift: f32, relu: bool) {
        if relu {
            xs.iter_mut().for_each(|x| *x = (*x * scale + shift).max(0.0));
        } else {
            xs.iter_mut().for_each(|x| *x = *x * scale + shift);
        }
    }
}

multiversion! {
    /// [`gelu_one`] of every element, in place.
    fn gelu_slice(xs: &mut [f32]) {
        for x in xs {
            *x = gelu_one(*x);
        }
    }
}

multiversion! {
    /// [`gelu_one`] of every element of `x`, into `out` (which it need not read, so it may
    /// start uninitialised).
    fn gelu_into(out: &mut [MaybeUninit<f32>], x: &[f32]) {
        for (out, &x) in out.iter_mut().zip(x) {
            out.write(gelu_one(x));
        }
    }
}

multiversion! {
    /// `grad *= GELU'(x) = Φ(x) + x φ(x)`, element by element.
    fn gelu_backward_slice(grad: &mut [f32], x: &[f32]) {
        for (grad, &x) in grad.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            let pdf = exp(-0.5 * x * x) * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
            *grad *= cdf + x * pdf;
        }
    }
}

multiversion! {
    /// `ds = p ⊙ (ds - rowsum(p ⊙ ds))` for each `keys`-long row: the softmax backward, with
    /// `ds` holding the probabilities' gradient on entry and the scores' on return.
    fn softmax_backward_rows(ds: &mut [f32], p: &[f32], keys: usize) {
        for (ds, p) in ds.chunks_exact_mut(keys).zip(p.chunks_exact(keys)) {
            let dot = dot(ds, p);
            for (ds, &p) in ds.iter_mut().zip(p) {
                *ds = p * (*ds - dot);
            }
        }
    }
}

multiversion! {
    /// Every element rounded to bf16 ([`round_to_bf16_scalar`]), in place.
    fn round_to_bf16_slice(xs: &mut [f32]) {
        for x in xs {
            *x = round_to_bf16_scalar(*x);
        }
    }
}

multiversion! {
    /// [`softmax_row`] of each `keys`-long row, in place.
    fn softmax_rows(scores: &mut [f32], keys: usize) {
        for row in scores.chunks_exact_mut(keys) {
            softmax_row(row);
        }
    }
}

multiversion! {
    /// Layer norm of each `d`-long row of `x` into `out` (`d` = γ's length), keeping each
    /// row's `[mean, 1 / σ]`; two passes (mean, then the centred sum of squares) as burn and
    /// PyTorch compute it.
    fn norm_rows(out: &mut [MaybeUninit<f32>], x: &[f32], stats: &mut [[f32; 2]], gamma: &[f32], beta: &[f32], epsilon: f32) {
        let d = gamma.len();
        for ((out, x), stats) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(stats) {
            let mean = fold_lanes(x, 0.0, |sum, x| sum + x) / d as f32;
            let mut var_lanes = [0f32; 8];
            let chunks = x.chunks_exact(8);
            let tail: f32 = chunks.remainder().iter().map(|&x| (x - mean) * (x - mean)).sum();
            for chunk in chunks {
                for (lane, &x) in var_lanes.iter_mut().zip(chunk) {
                    *lane += (x - mean) * (x - mean);
                }
            }
            let var = var_lanes.into_iter().fold(tail, |sum, x| sum + x) / d as f32;
            let inv_std = 1.0 / (var + epsilon).sqrt();
            for (((out, &x), &g), &b) in out.iter_mut().zip(x).zip(gamma).zip(beta) {
                out.write((x - mean) * inv_std * g + b);
            }
            *stats = [mean, inv_std];
        }
    }
}

multiversion! {
    /// [`norm_rows`]' backward for each row: `dx` from the output's gradient `grad`, and the
    /// row's `grad x̂` and `grad` added onto `dgamma` and `dbeta`.
    fn norm_backward_rows(
        dx: &mut [MaybeUninit<f32>],
        grad: &[f32],
        x: &[f32],
        stats: &[[f32; 2]],
        gamma: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32]
    ) {
        let d = gamma.len();
        let rows = dx.chunks_exact_mut(d).zip(grad.chunks_exact(d)).zip(x.chunks_exact(d));
        for (((dx, grad), x), &[mean, inv_std]) in rows.zip(stats) {
            // dx holds x̂ for now.
            for (xhat, &x) in dx.iter_mut().zip(x) {
                xhat.write((x - mean) * inv_std);
            }
            // SAFETY: the loop above wrote every element of the row.
            let dx = unsafe { assume_written(dx) };
            // Σ gγ and Σ gγx̂ over eight lanes (see `fold_lanes`), then the tail.
            let (mut sum_gg, mut sum_ggx) = ([0f32; 8], [0f32; 8]);
            let lanes = grad.chunks_exact(8).zip(gamma.chunks_exact(8)).zip(dx.chunks_exact(8));
            for ((g, gm), xhat) in lanes {
                for l in 0..8 {
                    sum_gg[l] += g[l] * gm[l];
                    sum_ggx[l] += g[l] * gm[l] * xhat[l];
                }
            }
            for i in d - d % 8..d {
                sum_gg[0] += grad[i] * gamma[i];
                sum_ggx[0] += grad[i] * gamma[i] * dx[i];
            }
            let mean_gg = sum_gg.iter().sum::<f32>() / d as f32;
            let mean_ggx = sum_ggx.iter().sum::<f32>() / d as f32;
            for ((((dx, &g), &gm), dgamma), dbeta) in dx.iter_mut().zip(grad).zip(gamma).zip(dgamma.iter_mut()).zip(dbeta.iter_mut()) {
                let xhat = *dx;
                *dgamma += g * xhat;
                *dbeta += g;
                *dx = (g * gm - mean_gg - xhat * mean_ggx) * inv_std;
            }
        }
    }
}

/// `xs` as initialised values.
///
/// SAFETY: every element of `xs` must have been written.
#[inline(always)]
pub(crate) unsafe fn assume_written(xs: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller vouches for the values.
    unsafe { std::slice::from_raw_parts_mut(xs.as_mut_ptr().cast(), xs.len()) }
}

/// `a · b` over [`LANES`] interleaved accumulators (see [`fold_lanes`]).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a_chunks.zip(b_chunks) {
        for ((lane, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *lane += x * y;
        }
    }
    lanes.into_iter().fold(tail, |sum, x| sum + x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_the_standard_library() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(-100.0), 0.0);
        // erf(x) = 1 - erfc(x); erfc by its continued fraction would be overkill: compare with
        // the integral's series, exact to f64 for |x| ≤ 3 and then erf is 1 to 4e-5 at most.
        for i in -300..=300 {
            let x = i as f64 * 0.01;
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let want = sum * 2.0 / std::f64::consts::PI.sqrt();
            let got = erf(x as f32) as f64;
            assert!((got - want).abs() < 5e-7, "erf({x}) = {got}, want {want}");
        }
        assert!((erf(10.0) - 1.0).abs() <= 2e-7 && (erf(-10.0) + 1.0).abs() <= 2e-7);
    }
}
