//! The micro-kernels of [`super`]: `vdpbf16ps` and its emulation, each multiplying a tile
//! of packed left-hand pairs by one panel.

use super::{PairStrides, TILE, WIDTH};
use crate::ops::bf16::round_to_bf16_scalar;

/// `$call` with the constant `$rows` set to the next tile's height: `$rows_left`, or [`TILE`]
/// when more rows are left. The micro-kernels are compiled for each height.
macro_rules! with_tile_rows {
    ($rows_left:expr, $rows:ident => $call:expr) => {
        match $rows_left {
            1 => with_tile_rows!(@ 1, $rows => $call),
            2 => with_tile_rows!(@ 2, $rows => $call),
            3 => with_tile_rows!(@ 3, $rows => $call),
            4 => with_tile_rows!(@ 4, $rows => $call),
            5 => with_tile_rows!(@ 5, $rows => $call),
            6 => with_tile_rows!(@ 6, $rows => $call),
            7 => with_tile_rows!(@ 7, $rows => $call),
            8 => with_tile_rows!(@ 8, $rows => $call),
            9 => with_tile_rows!(@ 9, $rows => $call),
            10 => with_tile_rows!(@ 10, $rows => $call),
            11 => with_tile_rows!(@ 11, $rows => $call),
            _ => with_tile_rows!(@ TILE, $rows => $call),
        }
    };
    (@ $value:expr, $rows:ident => $call:expr) => {{
        const $rows: usize = $value;
        $call
    }};
}

/// The micro-kernel that multiplies the pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `vdpbf16ps` (AVX512_BF16).
    Avx512Bf16,
    /// f32 multiply-adds in `vdpbf16ps`'s order, on any CPU.
    Emulated,
}

impl Bf16Kernel {
    /// The hardware kernel where the CPU has AVX512_BF16, else the emulation.
    pub fn detect() -> Self {
        if crate::ops::bf16::cpu_has_avx512_bf16() {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::Emulated
        }
    }

    /// Panics unless this CPU runs the kernel.
    pub(super) fn assert_runs_here(self) {
        assert!(
            self == Bf16Kernel::Emulated || crate::ops::bf16::cpu_has_avx512_bf16(),
            "bf16 panels: this CPU has no AVX512_BF16"
        );
    }
}

/// One panel's part of a depth block, for every tile of rows.
pub(super) struct Tile<'a> {
    /// The panel's pairs, [`WIDTH`] per depth pair.
    pub(super) panel: &'a [u32],
    /// `dst`'s row stride.
    pub(super) ldc: usize,
    /// Columns of the panel that are real.
    pub(super) width: usize,
    /// Whether the sums go on from what `dst` holds (depth blocks after the first).
    pub(super) resume: bool,
    /// Added to the finished sums (last depth block only).
    pub(super) bias: Option<&'a [f32]>,
    /// The finished sums then rounded to bf16 (last depth block only).
    pub(super) rounded: bool,
}

impl Tile<'_> {
    /// `c[m, width] (+)= a[m, pairs] · panel`, then the epilogue, tile after tile of [`TILE`]
    /// rows: full panels on the hardware kernel in one call, the rest through [`Self::run`].
    ///
    /// SAFETY: as [`Self::run`]'s, for `m` rows.
    pub(super) unsafe fn run_rows(
        &self,
        kernel: Bf16Kernel,
        a: &[u32],
        m: usize,
        strides: PairStrides,
        c: *mut f32,
    ) {
        if m == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if kernel == Bf16Kernel::Avx512Bf16 && self.width == WIDTH {
            assert!(a.len() > (m - 1) * strides.0 + (self.panel.len() / WIDTH - 1) * strides.1);
            let bias = self.bias.map(|b| b.try_into().expect("a full panel's bias"));
            // SAFETY: `a` is long enough (asserted); the caller vouches for `c` and the CPU.
            return unsafe {
                dpbf16_rows(
                    a.as_ptr(),
                    m,
                    strides,
                    self.panel,
                    (c, self.ldc, self.resume),
                    (bias, self.rounded),
                )
            };
        }
        for i in (0..m).step_by(TILE) {
            let a = &a[i * strides.0..];
            // SAFETY: rows `i..` of the tile, for which the caller vouches.
            unsafe {
                let c = c.add(i * self.ldc);
                with_tile_rows!(m - i, R => self.run::<R>(kernel, a, strides, c))
            }
        }
    }

    /// `c[R, width] (+)= a[R, pairs] · panel`, then the epilogue (`+ bias`, rounding) on the
    /// last depth block: a full panel in place, the last, narrower one through a
    /// [`WIDTH`]-wide buffer.
    ///
    /// SAFETY: `a` holds `R` rows of the panel's depth pairs at `strides`; `c` `R` rows `ldc`
    /// apart of `width` values, initialised if `resume`; AVX512_BF16 for its kernel.
    pub(super) unsafe fn run<const R: usize>(
        &self,
        kernel: Bf16Kernel,
        a: &[u32],
        strides: PairStrides,
        c: *mut f32,
    ) {
        assert!(a.len() > (R - 1) * strides.0 + (self.panel.len() / WIDTH - 1) * strides.1);
        // The bias padded with zeros for a narrow panel; built only where there is one.
        let padded_bias: [f32; WIDTH];
        let bias: Option<&[f32; WIDTH]> = match self.bias {
            Some(bias) if self.width == WIDTH => Some(bias.try_into().expect("a full panel's bias")),
            Some(bias) => {
                padded_bias = std::array::from_fn(|j| bias.get(j).copied().unwrap_or(0.0));
                Some(&padded_bias)
            }
            None => None,
        };
        // SAFETY: `a` is long enough (asserted); the caller vouches for `c` and the CPU.
        let multiply = |c: *mut f32, ldc: usize| unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Bf16Kernel::Avx512Bf16 => dpbf16::<R>(
                    a.as_ptr(),
                    strides,
                    self.panel,
                    (c, ldc, self.resume),
                    (bias, self.rounded),
                ),
                #[cfg(not(target_arch = "x86_64"))]
                Bf16Kernel::Avx512Bf16 => unreachable!("AVX512_BF16 is x86-64's"),
                Bf16Kernel::Emulated => emulated::<R>(
                    a,
                    strides,
                    self.panel,
                    (c, ldc, self.resume),
                    (bias, self.rounded),
                ),
            }
        };
        if self.width == WIDTH {
            return multiply(c, self.ldc);
        }
        let mut buffer = [[0f32; WIDTH]; R];
        for (r, row) in buffer.iter_mut().enumerate().filter(|_| self.resume) {
            // SAFETY: the caller vouches for `width` initialised values in row `r`.
            row[..self.width]
                .copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(r * self.ldc), self.width) });
        }
        multiply(buffer.as_mut_ptr().cast(), WIDTH);
        for (r, row) in buffer.iter().enumerate() {
            // SAFETY: row `r` of the tile has `width` writable values at `c + r * ldc`.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * self.ldc), self.width) };
        }
    }
}

/// The emulation: for each pair, the second value's product added, then the first's.
///
/// SAFETY: `c` must hold `R` rows `ldc` apart of [`WIDTH`] writable values, initialised if
/// `resume`.
unsafe fn emulated<const R: usize>(
    a: &[u32],
    strides: PairStrides,
    panel: &[u32],
    (c, ldc, resume): (*mut f32, usize, bool),
    (bias, rounded): (Option<&[f32; WIDTH]>, bool),
) {
    #[inline(always)]
    fn body<const R: usize>(a: &[u32], (rs, ps): PairStrides, panel: &[u32], acc: &mut [[f32; WIDTH]; R]) {
        let low = |x: u32| f32::from_bits(x << 16);
        let high = |x: u32| f32::from_bits(x & 0xffff_0000);
        for (p, pairs) in panel.chunks_exact(WIDTH).enumerate() {
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = a[r * rs + p * ps];
                let (first, second) = (low(x), high(x));
                for (sum, &y) in acc.iter_mut().zip(pairs) {
                    *sum = (*sum + second * high(y)) + first * low(y);
                }
            }
        }
    }
    let mut acc = [[0f32; WIDTH]; R];
    for (r, row) in acc.iter_mut().enumerate().filter(|_| resume) {
        // SAFETY: the caller vouches for row `r`.
        row.copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(r * ldc), WIDTH) });
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2<const R: usize>(a: &[u32], strides: PairStrides, panel: &[u32], acc: &mut [[f32; WIDTH]; R]) {
            body(a, strides, panel, acc)
        }
        // SAFETY: the CPU has AVX2.
        unsafe { avx2(a, strides, panel, &mut acc) };
    } else {
        body(a, strides, panel, &mut acc);
    }
    #[cfg(not(target_arch = "x86_64"))]
    body(a, strides, panel, &mut acc);
    for (r, row) in acc.iter_mut().enumerate() {
        if let Some(bias) = bias {
            row.iter_mut().zip(bias).for_each(|(x, b)| *x += b);
        }
        if rounded {
            row.iter_mut().for_each(|x| *x = round_to_bf16_scalar(*x));
        }
        // SAFETY: the caller vouches for row `r`.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), WIDTH) };
    }
}

/// [`dpbf16`] over `m` rows, tile after tile of [`TILE`]: one call per panel, so that the
/// full tiles' kernel is inlined here.
///
/// SAFETY: as [`dpbf16`]'s, for `m` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_rows(
    a: *const u32,
    m: usize,
    strides: PairStrides,
    panel: &[u32],
    (c, ldc, resume): (*mut f32, usize, bool),
    epilogue: (Option<&[f32; WIDTH]>, bool),
) {
    for i in (0..m).step_by(TILE) {
        // SAFETY: rows `i..` of those the caller vouches for.
        unsafe {
            let (a, c) = (a.add(i * strides.0), (c.add(i * ldc), ldc, resume));
            with_tile_rows!(m - i, R => dpbf16::<R>(a, strides, panel, c, epilogue))
        }
    }
}

/// The hardware micro-kernel: 2R accumulators, each depth pair two panel loads and R
/// broadcast pairs for 2R `vdpbf16ps`.
///
/// SAFETY: the CPU must have AVX512_BF16; `a` must hold `R` rows at `strides` of
/// `panel.len() / WIDTH` pairs; `c` `R` rows `ldc` apart of [`WIDTH`] writable values,
/// initialised if `resume`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn dpbf16<const R: usize>(
    a: *const u32,
    (rs, ps): PairStrides,
    panel: &[u32],
    (c, ldc, resume): (*mut f32, usize, bool),
    (bias, rounded): (Option<&[f32; WIDTH]>, bool),
) {
    use std::arch::x86_64::*;
    // SAFETY: every load and store stays in `panel` or the regions the caller vouches for;
    // the transmutes reinterpret 512 bits as 512 bits.
    unsafe {
        let mut sums = [[_mm512_setzero_ps(); 2]; R];
        // The tile's lines of `c`, on their way while the products run, so that the stores at
        // the end do not wait for them.
        for r in 0..R {
            _mm_prefetch::<_MM_HINT_ET0>(c.add(r * ldc).cast());
            _mm_prefetch::<_MM_HINT_ET0>(c.add(r * ldc + WIDTH - 1).cast());
        }
        if resume {
            for (r, sums) in sums.iter_mut().enumerate() {
                *sums = [
                    _mm512_loadu_ps(c.add(r * ldc)),
                    _mm512_loadu_ps(c.add(r * ldc + 16)),
                ];
            }
        }
        for (p, pairs) in panel.chunks_exact(WIDTH).enumerate() {
            let b: [__m512bh; 2] = [
                std::mem::transmute(_mm512_loadu_si512(pairs.as_ptr().cast())),
                std::mem::transmute(_mm512_loadu_si512(pairs.as_ptr().add(16).cast())),
            ];
            for (r, sums) in sums.iter_mut().enumerate() {
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * rs + p * ps) as i32));
                sums[0] = _mm512_dpbf16_ps(sums[0], x, b[0]);
                sums[1] = _mm512_dpbf16_ps(sums[1], x, b[1]);
            }
        }
        let bias = bias.map(|b| [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16))]);
        for (r, sums) in sums.iter().enumerate() {
            let [low, high] = match bias {
                Some([b0, b1]) => [_mm512_add_ps(sums[0], b0), _mm512_add_ps(sums[1], b1)],
                None => *sums,
            };
            _mm512_storeu_ps(c.add(r * ldc), low);
            _mm512_storeu_ps(c.add(r * ldc + 16), high);
        }
        // A second pass over the lines just stored (in L1): rounding the accumulators before
        // the stores keeps them in memory instead of registers.
        if rounded {
            for r in 0..R {
                for half in [c.add(r * ldc), c.add(r * ldc + 16)] {
                    _mm512_storeu_ps(half, round_to_bf16_512(_mm512_loadu_ps(half)));
                }
            }
        }
    }
}

/// [`round_to_bf16_scalar`] of 16 lanes: add half a bf16 unit in the last place, less one
/// unless the kept part is odd, drop the low 16 bits; NaN stays as it is.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn round_to_bf16_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(x);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let half = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff));
    let rounded = _mm512_and_si512(
        _mm512_add_epi32(bits, half),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    );
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
    _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(rounded), x)
}
