//! `x · W (+ b)` with bf16 operands and f32 accumulation, for `--precision bf16`: both
//! operands rounded to bf16 (ties to even) and packed as pairs of consecutive depth values,
//! the pairs multiplied by AVX512_BF16's `vdpbf16ps` where the CPU has it, and by an
//! emulation that rounds exactly as that instruction does everywhere else.
//!
//! `vdpbf16ps` adds to each f32 lane the products of one pair, the second (odd) value's first,
//! each sum rounded to f32 (the products of two bf16 values are exact in f32). The emulated
//! micro-kernel does the same additions in the same order, so both paths give the same bits.
//! The instruction reads subnormal inputs as zero; the packing flushes them, so both paths see
//! the same operands (a subnormal sum is not flushed by the emulation: the paths could differ
//! there, below 1.2e-38).
//!
//! The layout follows [`crate::panels`]: the right-hand matrix in panels of [`WIDTH`] columns
//! and [`DEPTH`] deep, the left-hand rows broadcast where they lie (one dword, one pair, at a
//! time), tiles of [`TILE`] rows.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::ops::bf16::round_to_bf16_scalar;

mod convert;
mod micro_kernel;
mod packed_lhs;

use convert::{consecutive_pairs, interleave_pairs, pair};
pub use micro_kernel::Bf16Kernel;
use micro_kernel::Tile;
pub(crate) use packed_lhs::BothWays;

/// Columns of a panel: two vectors of 16 f32 lanes.
const WIDTH: usize = 32;
/// Rows of the micro-kernel's tile: 24 accumulators, two panel vectors and a broadcast fill
/// 27 of the 32 `zmm` registers.
pub(crate) const TILE: usize = 12;
/// Depth of one panel block (even): a `DEPTH x 32` panel of bf16 is 24 KiB, inside L1.
const DEPTH: usize = 384;
/// Rows a task multiplies against every panel before moving on (their bf16 pairs stay in L2).
const ROW_TILE: usize = 96;
// Row tiles hand whole pairs of rows to `Bf16Panels::product_finishing_rows`' `finish`.
const _: () = assert!(ROW_TILE % 2 == 0);
/// Values up to which packing stays on the calling thread.
const SERIAL: usize = 1 << 16;

/// `row` as bf16 pairs of consecutive values ([`consecutive_pairs`]), an odd last value paired
/// with zero; `out.len() == row.len().div_ceil(2)`.
#[inline(always)]
fn row_as_pairs(out: &mut [u32], row: &[f32]) {
    let k = row.len();
    assert_eq!(out.len(), k.div_ceil(2));
    consecutive_pairs(&mut out[..k / 2], &row[..k / 2 * 2]);
    if k % 2 == 1 {
        out[k / 2] = pair(row[k - 1], 0.0);
    }
}

crate::simd::multiversion! {
    /// `sums[j] += x[j]`.
    fn add_into(sums: &mut [f32], x: &[f32]) {
        sums.iter_mut().zip(x).for_each(|(sum, x)| *sum += x);
    }
}

crate::simd::multiversion! {
    /// `sums[j] += x[j]` rounded to bf16 ([`round_to_bf16_scalar`]).
    fn add_rounded_into(sums: &mut [f32], x: &[f32]) {
        sums.iter_mut().zip(x).for_each(|(sum, &x)| *sum += round_to_bf16_scalar(x));
    }
}

/// The column sums that packing adds up on the way, in row order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnSums {
    None,
    /// Of the values as given.
    Exact,
    /// Of the values rounded to bf16, as they are packed.
    OfRounded,
}

/// Depth pairs ahead of the packing whose rows are prefetched.
const AHEAD: usize = 4;

/// Values at the start of a row prefetched ahead of its packing: the hardware prefetchers
/// follow a longer row once its first lines are read.
const AHEAD_VALUES: usize = 64;

/// Asks for `x`'s cache lines ahead of their use: packing reads pairs of rows a page or more
/// apart, where the hardware prefetchers stop.
#[inline(always)]
fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in x.chunks(16) {
        // SAFETY: a prefetch only hints at an address, here one inside `x`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// Prefetches `columns` of the two rows (`stride` apart in `values`) that pair up [`AHEAD`]
/// pairs after the one at depth `d`, those of the `k` that exist.
#[inline(always)]
fn prefetch_pair_ahead(
    (values, stride): (&[f32], usize),
    d: usize,
    k: usize,
    columns: std::ops::Range<usize>,
) {
    for ahead in [d + 2 * AHEAD, d + 2 * AHEAD + 1].into_iter().filter(|&d| d < k) {
        prefetch(&values[ahead * stride..][columns.clone()]);
    }
}

/// Prefetches the start (up to [`AHEAD_VALUES`]) of `columns` of the row [`AHEAD`] rows after
/// `row` (rows `stride` apart in `values`), if it is before `end`.
#[inline(always)]
fn prefetch_row_ahead(
    (values, stride): (&[f32], usize),
    row: usize,
    end: usize,
    columns: std::ops::Range<usize>,
) {
    if row + AHEAD < end {
        let start = columns.start;
        prefetch(&values[(row + AHEAD) * stride..][start..columns.end.min(start + AHEAD_VALUES)]);
    }
}

/// What a product does to its finished sums before it stores them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added to every row (`n` values).
    pub(crate) bias: Option<&'a [f32]>,
    /// Each value then rounded to bf16 ([`round_to_bf16_scalar`]).
    pub(crate) rounded: bool,
}

/// Where packed left-hand pairs lie: pair `p` of row `r` at `r * .0 + p * .1`.
type PairStrides = (usize, usize);

/// A strided f32 matrix: values, (column, row) strides in elements.
pub(crate) type Strided<'a> = (&'a [f32], usize, usize);

/// A `[k, n]` right-hand matrix as bf16 pairs in panels of [`WIDTH`] columns, `k` padded with
/// a zero to even and `n` with zeros to a multiple of [`WIDTH`]: for each depth block of up to
/// [`DEPTH`] values, for each panel, for each pair of depths, its [`WIDTH`] pairs.
pub(crate) struct Bf16Panels {
    values: Vec<u32>,
    k: usize,
    n: usize,
}

impl Bf16Panels {
    /// `rhs` `[k, n]` rounded and packed; over the cores when large.
    pub(crate) fn pack(rhs: Strided, shape: [usize; 2]) -> Self {
        Self::pack_summing(rhs, shape, ColumnSums::None).0
    }

    /// [`Self::pack`] for a row-major `rhs` `[k, n]`, with the f32 sums of its columns, each
    /// added in row order while the rows are in cache for packing.
    pub(crate) fn pack_with_column_sums((rhs, rs): (&[f32], usize), shape: [usize; 2]) -> (Self, Vec<f32>) {
        Self::pack_summing((rhs, 1, rs), shape, ColumnSums::Exact)
    }

    /// [`Self::pack_with_column_sums`] with the sums of the values rounded to bf16: those of
    /// the matrix that the panels hold.
    pub(crate) fn pack_with_rounded_column_sums(
        (rhs, rs): (&[f32], usize),
        shape: [usize; 2],
    ) -> (Self, Vec<f32>) {
        Self::pack_summing((rhs, 1, rs), shape, ColumnSums::OfRounded)
    }

    fn pack_summing((rhs, cs, rs): Strided, [k, n]: [usize; 2], summing: ColumnSums) -> (Self, Vec<f32>) {
        assert!(k > 0 && n > 0, "bf16 panels: an empty matrix");
        assert!(
            summing == ColumnSums::None || cs == 1,
            "bf16 panels: column sums of a row-major matrix only"
        );
        assert!(
            (k - 1) * rs + (n - 1) * cs < rhs.len(),
            "bf16 panels: rhs is too short"
        );
        let padded = n.next_multiple_of(WIDTH);
        let pairs = k.div_ceil(2);
        let mut values = Vec::with_capacity(pairs * padded);
        let mut blocks = &mut values.spare_capacity_mut()[..pairs * padded];
        // Each panel's columns' sums (left at zero without `summing`).
        let mut sums = vec![0f32; padded];
        let add: Option<fn(&mut [f32], &[f32])> = match summing {
            ColumnSums::None => None,
            ColumnSums::Exact => Some(add_into),
            ColumnSums::OfRounded => Some(add_rounded_into),
        };
        for k0 in (0..k).step_by(DEPTH) {
            let depth_pairs = DEPTH.min(k - k0).div_ceil(2);
            let (block, rest) = blocks.split_at_mut(depth_pairs * padded);
            blocks = rest;
            let pack_panel = |((panel, out), sums): ((usize, &mut [MaybeUninit<u32>]), &mut [f32])| {
                let j0 = panel * WIDTH;
                let width = WIDTH.min(n - j0);
                // The depth after the last one reads as zeros.
                let zeros = [0f32; WIDTH];
                if cs == 1 {
                    // Rows of the panel are contiguous in `rhs`.
                    for (p, out) in out.chunks_exact_mut(WIDTH).enumerate() {
                        let d = k0 + 2 * p;
                        prefetch_pair_ahead((rhs, rs), d, k, j0..j0 + width);
                        let first = &rhs[d * rs + j0..][..width];
                        let second = if d + 1 < k {
                            &rhs[(d + 1) * rs + j0..][..width]
                        } else {
                            &zeros[..width]
                        };
                        interleave_pairs(&mut out[..width], first, second);
                        out[width..].fill(MaybeUninit::new(0));
                        if let Some(add) = add {
                            add(&mut sums[..width], first);
                            if d + 1 < k {
                                add(&mut sums[..width], second);
                            }
                        }
                    }
                } else if rs == 1 {
                    // Columns are contiguous (a transposed matrix): pair each column's depths
                    // in one pass, then transpose the pairs into the panel.
                    let depth = DEPTH.min(k - k0);
                    let mut columns = vec![0u32; width * depth_pairs];
                    for (j, column) in columns.chunks_exact_mut(depth_pairs).enumerate() {
                        prefetch_row_ahead((rhs, cs), j0 + j, j0 + width, k0..k0 + depth);
                        row_as_pairs(column, &rhs[(j0 + j) * cs + k0..][..depth]);
                    }
                    for (p, out) in out.chunks_exact_mut(WIDTH).enumerate() {
                        for (j, out) in out.iter_mut().enumerate() {
                            out.write(if j < width {
                                columns[j * depth_pairs + p]
                            } else {
                                0
                            });
                        }
                    }
                } else {
                    // Neither rows nor columns contiguous: read each column in order.
                    for j in 0..WIDTH {
                        for (p, out) in out.chunks_exact_mut(WIDTH).enumerate() {
                            let d = k0 + 2 * p;
                            let at = |d: usize| if d < k { rhs[d * rs + (j0 + j) * cs] } else { 0.0 };
                            out[j].write(if j < width { pair(at(d), at(d + 1)) } else { 0 });
                        }
                    }
                }
            };
            if k * n > SERIAL {
                block
                    .par_chunks_mut(depth_pairs * WIDTH)
                    .enumerate()
                    .zip(sums.par_chunks_mut(WIDTH))
                    .for_each(pack_panel);
            } else {
                block
                    .chunks_mut(depth_pairs * WIDTH)
                    .enumerate()
                    .zip(sums.chunks_mut(WIDTH))
                    .for_each(pack_panel);
            }
        }
        // SAFETY: every pair of every panel was written, the padding with zeros.
        unsafe { values.set_len(pairs * padded) };
        sums.truncate(n);
        (Self { values, k, n }, sums)
    }

    /// Bytes held, padding included.
    pub(crate) fn bytes(&self) -> usize {
        4 * self.values.len()
    }

    /// `dst [m, n] = lhs [m, k] · self`, then the epilogue's bias and rounding, on this
    /// thread, `lhs` given with its strides and rounded here, `dst` row-major and dense. Every
    /// element of `dst` is written; it may start uninitialised.
    pub(crate) fn product<'a>(
        &self,
        kernel: Bf16Kernel,
        dst: &'a mut [MaybeUninit<f32>],
        lhs: Strided,
        epilogue: Epilogue,
    ) -> &'a mut [f32] {
        self.product_finishing_rows(kernel, dst, lhs, epilogue, |_, _| {})
    }

    /// [`Self::product`], handing each block of up to [`ROW_TILE`] finished rows (an even
    /// number but for the last block) to `finish(i, rows)`, from row `i` on, while they are
    /// still in cache.
    pub(crate) fn product_finishing_rows<'a>(
        &self,
        kernel: Bf16Kernel,
        dst: &'a mut [MaybeUninit<f32>],
        lhs: Strided,
        epilogue: Epilogue,
        mut finish: impl FnMut(usize, &mut [f32]),
    ) -> &'a mut [f32] {
        let n = self.n;
        let m = dst.len() / n;
        assert!(dst.len() == m * n, "bf16 panels: dst of the wrong size");
        let dst = dst.as_mut_ptr().cast::<f32>();
        // SAFETY: `dst` holds `[m, n]` and is borrowed exclusively; a block's rows are all
        // written when it is handed over, and the product no longer touches them.
        unsafe {
            self.product_blocks(kernel, (dst, n), m, lhs, epilogue, |i0, rows| {
                finish(i0, std::slice::from_raw_parts_mut(dst.add(i0 * n), rows * n))
            });
            std::slice::from_raw_parts_mut(dst, m * n)
        }
    }

    /// [`Self::product`] into `dst` with row stride `ldc`.
    ///
    /// SAFETY: `dst` must be valid for writes of `m` rows `ldc` apart of `n` values, which no
    /// one else accesses meanwhile.
    pub(crate) unsafe fn product_raw(
        &self,
        kernel: Bf16Kernel,
        dst: (*mut f32, usize),
        m: usize,
        lhs: Strided,
        epilogue: Epilogue,
    ) {
        // SAFETY: as the caller vouches.
        unsafe { self.product_blocks(kernel, dst, m, lhs, epilogue, |_, _| {}) }
    }

    /// [`Self::product_raw`], calling `finished(i0, rows)` after each block of rows.
    ///
    /// SAFETY: as [`Self::product_raw`].
    unsafe fn product_blocks(
        &self,
        kernel: Bf16Kernel,
        (dst, ldc): (*mut f32, usize),
        m: usize,
        (lhs, cs, rs): Strided,
        epilogue: Epilogue,
        mut finished: impl FnMut(usize, usize),
    ) {
        let (k, n) = (self.k, self.n);
        assert!(ldc >= n, "bf16 panels: rows of dst overlap");
        kernel.assert_runs_here();
        assert!(
            epilogue.bias.is_none_or(|b| b.len() == n),
            "bf16 panels: bias of the wrong size"
        );
        let pairs = k.div_ceil(2);
        let mut rows = vec![0u32; ROW_TILE.min(m) * pairs];
        for i0 in (0..m).step_by(ROW_TILE) {
            let tile = ROW_TILE.min(m - i0);
            assert!(
                (i0 + tile - 1) * rs + (k - 1) * cs < lhs.len(),
                "bf16 panels: lhs is too short"
            );
            let rows = &mut rows[..tile * pairs];
            // The rows' pairs, row after row or pair after pair.
            let strides = if cs == 1 {
                for (i, out) in (i0..).zip(rows.chunks_exact_mut(pairs)) {
                    prefetch_row_ahead((lhs, rs), i, m, 0..k);
                    row_as_pairs(out, &lhs[i * rs..][..k]);
                }
                (pairs, 1)
            } else if rs == 1 {
                // Rows are columns of a row-major matrix (a transposed one): two of its rows
                // paired give one pair of each row of the tile, kept in that order.
                // SAFETY: `interleave_pairs` writes initialised values only.
                let rows = unsafe { &mut *(rows as *mut [u32] as *mut [MaybeUninit<u32>]) };
                let zeros = [0f32; ROW_TILE];
                for (p, out) in rows.chunks_exact_mut(tile).enumerate() {
                    prefetch_pair_ahead((lhs, cs), 2 * p, k, i0..i0 + tile);
                    let first = &lhs[2 * p * cs + i0..][..tile];
                    let second = if 2 * p + 1 < k {
                        &lhs[(2 * p + 1) * cs + i0..][..tile]
                    } else {
                        &zeros[..tile]
                    };
                    interleave_pairs(out, first, second);
                }
                (1, tile)
            } else {
                for p in 0..pairs {
                    let at = |d: usize, i: usize| if d < k { lhs[i * rs + d * cs] } else { 0.0 };
                    for (r, i) in (i0..i0 + tile).enumerate() {
                        rows[r * pairs + p] = pair(at(2 * p, i), at(2 * p + 1, i));
                    }
                }
                (pairs, 1)
            };
            // SAFETY: rows `i0..i0 + tile` of `dst` are the caller's; the kernel runs here
            // (asserted above).
            unsafe { self.row_tile(kernel, (dst.add(i0 * ldc), ldc), (rows, tile, strides), epilogue) };
            finished(i0, tile);
        }
    }

    /// [`Self::product`] for `m` rows of packed pairs (at most [`ROW_TILE`]), pair `p` of
    /// row `r` at `rows[r * strides.0 + p * strides.1]`, from `dst` on.
    ///
    /// SAFETY: `dst` must be valid for writes of the rows' `n` values each, `ldc` apart; the
    /// CPU must have AVX512_BF16 for [`Bf16Kernel::Avx512Bf16`].
    unsafe fn row_tile(
        &self,
        kernel: Bf16Kernel,
        (dst, ldc): (*mut f32, usize),
        (rows, m, strides): (&[u32], usize, PairStrides),
        epilogue: Epilogue,
    ) {
        let (k, n) = (self.k, self.n);
        assert_eq!(
            rows.len(),
            m * k.div_ceil(2),
            "bf16 panels: rows of the wrong size"
        );
        let padded = n.next_multiple_of(WIDTH);
        let mut offset = 0;
        for k0 in (0..k).step_by(DEPTH) {
            let depth_pairs = DEPTH.min(k - k0).div_ceil(2);
            let block = &self.values[offset * padded..(offset + depth_pairs) * padded];
            let last = k0 + DEPTH >= k;
            for (panel, values) in block.chunks_exact(depth_pairs * WIDTH).enumerate() {
                let j0 = panel * WIDTH;
                let width = WIDTH.min(n - j0);
                let tile = Tile {
                    panel: values,
                    ldc,
                    width,
                    resume: k0 > 0,
                    bias: epilogue.bias.filter(|_| last).map(|b| &b[j0..j0 + width]),
                    rounded: epilogue.rounded && last,
                };
                // SAFETY: the rows hold `depth_pairs` pairs from `offset`, and the panel's
                // columns of every row lie in `dst`; the caller vouches for the CPU.
                unsafe { tile.run_rows(kernel, &rows[offset * strides.1..], m, strides, dst.add(j0)) };
            }
            offset += depth_pairs;
        }
    }
}

/// `lhs [rows, k] · rhs (+ bias)` as a new row-major `[rows, n]`, `lhs` strided, by row
/// blocks over the cores ([`crate::gemm::block_rows`]); with `rounded`, each sum then rounded
/// to bf16 as the kernel stores it.
pub(crate) fn product_rows_bf16(
    kernel: Bf16Kernel,
    (lhs, cs, rs): Strided,
    rows: usize,
    rhs: &Bf16Panels,
    bias: Option<&[f32]>,
    rounded: bool,
) -> Vec<f32> {
    let n = rhs.n;
    if rows == 0 {
        return Vec::new();
    }
    let block = crate::gemm::block_rows(rows);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(block * n).enumerate().for_each(|(b, dst)| {
            rhs.product(
                kernel,
                dst,
                (&lhs[b * block * rs..], cs, rs),
                Epilogue { bias, rounded },
            );
        })
    };
    // SAFETY: `product` writes every element of its block.
    unsafe { crate::flex::written(rows * n, fill) }
}

#[cfg(test)]
mod tests {
    use super::convert::bf16_bits;
    use super::*;

    /// The definition: each output's pairs in depth order, the second value's product added
    /// first, each sum rounded to f32.
    pub(super) fn definition(
        lhs: Strided,
        rhs: Strided,
        [m, k, n]: [usize; 3],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let round = |x: f32| f32::from_bits(bf16_bits(x) << 16);
        let at = |(v, cs, rs): Strided, i: usize, j: usize, rows: usize| {
            if i < rows { round(v[i * rs + j * cs]) } else { 0.0 }
        };
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f32;
                for p in (0..k).step_by(2) {
                    let (a0, a1) = (
                        at(lhs, i, p, m),
                        if p + 1 < k { at(lhs, i, p + 1, m) } else { 0.0 },
                    );
                    let (b0, b1) = (at(rhs, p, j, k), at(rhs, p + 1, j, k));
                    sum = (sum + a1 * b1) + a0 * b0;
                }
                out.push(sum + bias.map_or(0.0, |b| b[j]));
            }
        }
        out
    }

    pub(super) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
            })
            .collect()
    }

    pub(super) fn kernels() -> Vec<Bf16Kernel> {
        let mut kernels = vec![Bf16Kernel::Emulated];
        if Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16 {
            kernels.push(Bf16Kernel::Avx512Bf16);
        } else {
            eprintln!("no AVX512_BF16: only the emulation is checked here");
        }
        kernels
    }

    #[test]
    fn products_equal_the_definition_bit_for_bit() {
        // Row counts across tiles and row tiles, odd depths and depths across panel blocks,
        // narrow last panels, dense and transposed operands, with a bias and without.
        for (m, k, n) in [
            (1, 1, 1),
            (13, 801, 48),
            (100, 384, 37),
            (7, 5, 33),
            (97, 769, 20),
        ] {
            // The lhs also strided both ways (every other value of longer rows).
            let (lhs, rhs, bias) = (values(3 * m * k + 1, 1), values(k * n, 2), values(n, 3));
            for (lhs_strides, rhs_strides) in [((1, k), (1, n)), ((m, 1), (k, 1)), ((2, 2 * k + 1), (1, n))] {
                let panels = Bf16Panels::pack((&rhs, rhs_strides.0, rhs_strides.1), [k, n]);
                for (bias, rounded) in [(Some(&bias[..]), false), (None, false), (Some(&bias[..]), true)] {
                    let lhs = (&lhs[..], lhs_strides.0, lhs_strides.1);
                    let mut want = definition(lhs, (&rhs, rhs_strides.0, rhs_strides.1), [m, k, n], bias);
                    if rounded {
                        want.iter_mut().for_each(|x| *x = round_to_bf16_scalar(*x));
                    }
                    for kernel in kernels() {
                        let got = product_rows_bf16(kernel, lhs, m, &panels, bias, rounded);
                        for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{kernel:?} rounded {rounded} {m}x{k}x{n} element {e}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn each_block_of_rows_is_handed_over_finished_and_in_order() {
        // 201 rows: two full row tiles and an odd last block of 9.
        let (m, k, n) = (201, 70, 45);
        let (lhs, rhs) = (values(m * k, 4), values(k * n, 5));
        let panels = Bf16Panels::pack((&rhs, 1, n), [k, n]);
        let want = definition((&lhs, 1, k), (&rhs, 1, n), [m, k, n], None);
        for kernel in kernels() {
            let mut blocks = Vec::new();
            let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
            let got = panels.product_finishing_rows(
                kernel,
                &mut dst,
                (&lhs, 1, k),
                Epilogue::default(),
                |i, rows| {
                    // Every value of the block is the product's, then changed here once.
                    assert!(
                        rows.iter()
                            .zip(&want[i * n..])
                            .all(|(g, w)| g.to_bits() == w.to_bits())
                    );
                    rows.iter_mut().for_each(|x| *x *= 2.0);
                    blocks.push((i, rows.len() / n));
                },
            );
            assert_eq!(blocks, [(0, ROW_TILE), (ROW_TILE, ROW_TILE), (2 * ROW_TILE, 9)]);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(g, w)| g.to_bits() == (2.0 * w).to_bits())
            );
        }
    }

    #[test]
    fn packing_sums_each_column_in_row_order() {
        // Three depth blocks, on the cores (k n > SERIAL), the last panel narrow, k odd.
        let (k, n) = (801, 150);
        let rhs: Vec<f32> = values(k * n, 4)
            .iter()
            .enumerate()
            .map(|(i, x)| x * 1e3f32.powi(i as i32 % 3))
            .collect();
        let mut want = vec![0f32; n];
        for row in rhs.chunks_exact(n) {
            want.iter_mut().zip(row).for_each(|(sum, v)| *sum += v);
        }
        let (panels, sums) = Bf16Panels::pack_with_column_sums((&rhs, n), [k, n]);
        let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&sums), bits(&want));
        assert_eq!(panels.values, Bf16Panels::pack((&rhs, 1, n), [k, n]).values);
    }

    #[test]
    fn the_hardware_kernel_runs_where_the_cpu_has_it() {
        let has = crate::ops::bf16::cpu_has_avx512_bf16();
        assert_eq!(Bf16Kernel::detect() == Bf16Kernel::Avx512Bf16, has);
    }
}
