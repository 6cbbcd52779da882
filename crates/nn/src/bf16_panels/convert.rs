//! f32 values to the bf16 pairs the micro-kernels multiply: [`bf16_bits`] defines the
//! conversion, exactly as AVX512_BF16's `vcvtne2ps2bf16` does it, and the loops over rows run
//! that instruction where the CPU has it (32 values an instruction), the portable
//! definition elsewhere. Both give the same bits for every input.

use std::mem::MaybeUninit;

use crate::ops::bf16::round_to_bf16_scalar;

/// `x` as bf16 bits, as `vcvtne2ps2bf16` converts it: zeros and subnormals to a zero of
/// their sign, NaNs truncated and made quiet, everything else rounded to the nearest
/// (ties to even).
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    let rounded = round_to_bf16_scalar(x).to_bits() >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    let signed_zero = (bits >> 16) & 0x8000;
    if bits & 0x7f80_0000 == 0 {
        signed_zero
    } else if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// Two depth-consecutive values as one dword: the first in the low half.
#[inline(always)]
pub(super) fn pair(first: f32, second: f32) -> u32 {
    bf16_bits(first) | bf16_bits(second) << 16
}

// The pairs' first values are their low halves as `u16`s at the lower address.
const _: () = assert!(cfg!(target_endian = "little"));

/// `x` as bf16 pairs of consecutive values ([`pair`]), `x.len() == 2 * out.len()`.
pub(super) fn consecutive_pairs(out: &mut [u32], x: &[f32]) {
    assert_eq!(x.len(), 2 * out.len());
    #[cfg(target_arch = "x86_64")]
    if crate::ops::bf16::cpu_has_avx512_bf16() {
        // SAFETY: the CPU has AVX512_BF16 (and with it AVX-512F).
        return unsafe { hardware::consecutive_pairs(out, x) };
    }
    portable_consecutive_pairs(out, x)
}

/// `(first[j], second[j])` as one bf16 pair each ([`pair`]), for every `j` of `out`.
pub(super) fn interleave_pairs(out: &mut [MaybeUninit<u32>], first: &[f32], second: &[f32]) {
    assert!(first.len() >= out.len() && second.len() >= out.len());
    #[cfg(target_arch = "x86_64")]
    if crate::ops::bf16::cpu_has_avx512_bf16() && std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX512_BF16 and AVX-512BW.
        return unsafe { hardware::interleave_pairs(out, first, second) };
    }
    portable_interleave_pairs(out, first, second)
}

crate::simd::multiversion! {
    /// [`consecutive_pairs`] by the definition, [`bf16_bits`].
    fn portable_consecutive_pairs(out: &mut [u32], x: &[f32]) {
        // SAFETY: `u32`s are two `u16`s each, the first one the pair's first value's bits;
        // the view borrows `out` exclusively.
        let halves = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u16>(), 2 * out.len()) };
        for (half, &x) in halves.iter_mut().zip(x) {
            *half = bf16_bits(x) as u16;
        }
    }
}

crate::simd::multiversion! {
    /// [`interleave_pairs`] by the definition, [`pair`].
    fn portable_interleave_pairs(out: &mut [MaybeUninit<u32>], first: &[f32], second: &[f32]) {
        for ((out, &x), &y) in out.iter_mut().zip(first).zip(second) {
            out.write(pair(x, y));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod hardware {
    use super::{MaybeUninit, pair, portable_consecutive_pairs};
    use std::arch::x86_64::*;

    /// [`super::consecutive_pairs`], 32 values a `vcvtne2ps2bf16`.
    ///
    /// SAFETY: the CPU must have AVX512_BF16; `x.len() == 2 * out.len()`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn consecutive_pairs(out: &mut [u32], x: &[f32]) {
        let whole = out.len() / 16;
        for c in 0..whole {
            // SAFETY: values `32 c..32 c + 32` of `x` and pairs `16 c..16 c + 16` of `out`
            // exist; the transmute reinterprets 512 bits as 512 bits.
            unsafe {
                let low = _mm512_loadu_ps(x.as_ptr().add(32 * c));
                let high = _mm512_loadu_ps(x.as_ptr().add(32 * c + 16));
                // The second operand's values become the low half of the result.
                let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
                _mm512_storeu_si512(out.as_mut_ptr().add(16 * c).cast(), halves);
            }
        }
        portable_consecutive_pairs(&mut out[16 * whole..], &x[32 * whole..]);
    }

    /// [`super::interleave_pairs`], 16 pairs a `vcvtne2ps2bf16` and a word permutation.
    ///
    /// SAFETY: the CPU must have AVX512_BF16 and AVX-512BW; `first` and `second` at least as
    /// long as `out`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn interleave_pairs(out: &mut [MaybeUninit<u32>], first: &[f32], second: &[f32]) {
        // Word 2j of a pair vector takes word j (first[j]), word 2j + 1 word 16 + j (second[j]).
        let order: [i16; 32] = std::array::from_fn(|w| (w / 2 + 16 * (w % 2)) as i16);
        let whole = out.len() / 16;
        // SAFETY: `order` is 512 bits; values and pairs `16 c..16 c + 16` exist for every
        // whole chunk `c`; the transmute reinterprets 512 bits as 512 bits.
        unsafe {
            let order = _mm512_loadu_si512(order.as_ptr().cast());
            for c in 0..whole {
                let firsts = _mm512_loadu_ps(first.as_ptr().add(16 * c));
                let seconds = _mm512_loadu_ps(second.as_ptr().add(16 * c));
                let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(seconds, firsts));
                let pairs = _mm512_permutexvar_epi16(order, halves);
                _mm512_storeu_si512(out.as_mut_ptr().add(16 * c).cast(), pairs);
            }
        }
        for j in 16 * whole..out.len() {
            out[j].write(pair(first[j], second[j]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values at every edge of the conversion: signed zeros, subnormals (the largest of which
    /// would round up to the smallest normal), ties both ways, values that round to infinity,
    /// infinities and NaNs with payloads only in the dropped half; then random bit patterns.
    fn awkward_values(len: usize) -> Vec<f32> {
        let edges = [
            0x0000_0000u32,
            0x8000_0000,
            0x0000_0001,
            0x807f_ffff,
            0x007f_ffff,
            0x0080_0000,
            0x3f80_8000,
            0x3f81_8000,
            0x3f80_7fff,
            0xbf80_8001,
            0x7f7f_ffff,
            0xff7f_8000,
            0x7f80_0000,
            0xff80_0000,
            0x7f80_0001,
            0xffc0_0000,
            0x7fbf_ffff,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random = std::iter::from_fn(|| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            Some(state as u32)
        });
        edges
            .into_iter()
            .chain(random)
            .take(len)
            .map(f32::from_bits)
            .collect()
    }

    #[test]
    fn the_conversion_flushes_rounds_to_even_and_quiets() {
        let bits = |x: u32| bf16_bits(f32::from_bits(x));
        assert_eq!(bits(0x007f_ffff), 0, "a subnormal is flushed before rounding");
        assert_eq!(bits(0x807f_ffff), 0x8000);
        assert_eq!(bits(0x3f80_8000), 0x3f80, "a tie goes to the even neighbour");
        assert_eq!(bits(0x3f81_8000), 0x3f82);
        assert_eq!(bits(0x3f80_8001), 0x3f81);
        assert_eq!(bits(0x7f7f_ffff), 0x7f80, "the largest floats round to infinity");
        assert_eq!(bits(0xff80_0000), 0xff80);
        assert_eq!(bits(0x7f80_0001), 0x7fc0, "a NaN stays a NaN, made quiet");
        assert_eq!(pair(1.0, -2.0), 0xc000_3f80, "the first value in the low half");
    }

    #[test]
    fn the_loops_equal_the_definition_bit_for_bit() {
        // 1000 pairs: whole vectors and a tail; `first` and `second` offset by one value.
        let x = awkward_values(2001);
        let mut pairs = vec![0u32; 1000];
        consecutive_pairs(&mut pairs, &x[..2000]);
        for (j, &got) in pairs.iter().enumerate() {
            let want = pair(x[2 * j], x[2 * j + 1]);
            assert_eq!(got, want, "consecutive pair {j}: {got:#x} vs {want:#x}");
        }
        let mut pairs = vec![MaybeUninit::new(0u32); 999];
        interleave_pairs(&mut pairs, &x[..1000], &x[1001..]);
        for (j, got) in pairs.iter().enumerate() {
            // SAFETY: every pair was written.
            let got = unsafe { got.assume_init() };
            let want = pair(x[j], x[1001 + j]);
            assert_eq!(got, want, "interleaved pair {j}: {got:#x} vs {want:#x}");
        }
    }
}
