//! `x · W (+ b)` for the linear layers on x86-64 with AVX2 and FMA but not AVX-512: a
//! BLIS-style product whose right-hand matrix (the weight) is packed into 16-column panels,
//! and whose 6 x 16 micro-kernel broadcasts the left-hand rows where they lie (dense
//! activations, so nothing else is packed).
//!
//! `gemm` 0.19, which the other kernels call, packs both operands again in every row-block
//! task (sixteen times per layer at batch 8); this kernel packs the weight once. The panels are packed before the row blocks start (over the
//! cores when large, and kept between inference calls by the caller). Each task walks its
//! rows in tiles of [`ROW_TILE`], so the rows it broadcasts stay in its L2 cache while a
//! panel (at most [`DEPTH`] deep, 24 KiB) stays in L1.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Columns of a panel: two AVX2 vectors.
const WIDTH: usize = 16;
/// Rows of the micro-kernel's tile: with two vectors a row, 12 accumulators and the two
/// panel vectors and one broadcast fill 15 of the 16 `ymm` registers.
pub(crate) const TILE: usize = 6;
/// Depth of one panel block: a `DEPTH x 16` panel is 24 KiB, inside the 32 KiB L1 cache.
const DEPTH: usize = 384;
/// Rows a task multiplies against every panel before moving on: `96 x 384` floats of the
/// left-hand side (144 KiB) stay in L2 while each panel is reused 16 times from L1.
const ROW_TILE: usize = 96;
/// Values up to which [`Panels::pack`] stays on the calling thread (the classifier head's
/// `384 x 37`), where handing panels to the other core costs more than it saves.
const SERIAL: usize = 1 << 16;

/// A `[k, n]` right-hand matrix in panels of 16 columns, `n` padded with zeros to a multiple
/// of 16: for each block of up to [`DEPTH`] rows, for each panel, its rows of 16 contiguous
/// values.
pub(crate) struct Panels {
    values: Vec<f32>,
    k: usize,
    n: usize,
}

/// What a tile's sum starts from, or is finished with.
#[derive(Clone, Copy)]
enum Start {
    /// The bias row, from the panel's first column, added to the finished product.
    Bias(*const f32),
    Zero,
    /// What `dst` already holds (the depth blocks after the first).
    Dst,
}

impl Panels {
    /// `rhs` `[k, n]`, given with its (column, row) strides in elements, packed; `None` where
    /// `gemm` is the better path ([`preferred`]: the CPU lacks AVX2 or FMA, is not x86-64, or
    /// has AVX-512).
    pub(crate) fn pack(rhs: (&[f32], usize, usize), shape: [usize; 2]) -> Option<Self> {
        if !preferred() {
            return None;
        }
        Self::pack_here(rhs, shape)
    }

    /// [`Self::pack`] wherever the CPU runs the micro-kernel ([`supported`]), preferred or not.
    /// Matrices of more than [`SERIAL`] values are packed over the cores.
    pub(crate) fn pack_here((rhs, cs, rs): (&[f32], usize, usize), [k, n]: [usize; 2]) -> Option<Self> {
        if !supported() || k == 0 || n == 0 {
            return None;
        }
        assert!(
            (k - 1) * rs + (n - 1) * cs < rhs.len(),
            "panels: rhs is too short"
        );
        let padded = n.next_multiple_of(WIDTH);
        let mut values = Vec::with_capacity(k * padded);
        let mut blocks = &mut values.spare_capacity_mut()[..k * padded];
        for k0 in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - k0);
            let (block, rest) = blocks.split_at_mut(depth * padded);
            blocks = rest;
            let pack_panel = |(panel, out): (usize, &mut [MaybeUninit<f32>])| {
                let j0 = panel * WIDTH;
                let width = WIDTH.min(n - j0);
                let origin = k0 * rs + j0 * cs;
                if cs == 1 {
                    // Rows of the panel are contiguous in `rhs`: one copy each.
                    for (p, row) in out.chunks_exact_mut(WIDTH).enumerate() {
                        let start = origin + p * rs;
                        for (value, &x) in row.iter_mut().zip(&rhs[start..start + width]) {
                            value.write(x);
                        }
                        row[width..].fill(MaybeUninit::new(0.0));
                    }
                } else {
                    // Columns are (a transposed matrix): read each one in order.
                    for j in 0..WIDTH {
                        for (p, row) in out.chunks_exact_mut(WIDTH).enumerate() {
                            row[j].write(if j < width {
                                rhs[origin + p * rs + j * cs]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            };
            if k * n > SERIAL {
                block
                    .par_chunks_mut(depth * WIDTH)
                    .enumerate()
                    .for_each(pack_panel);
            } else {
                block.chunks_mut(depth * WIDTH).enumerate().for_each(pack_panel);
            }
        }
        // SAFETY: every panel row was written, its padding with zeros.
        unsafe { values.set_len(k * padded) };
        Some(Self { values, k, n })
    }

    /// Bytes held, padding included.
    pub(crate) fn bytes(&self) -> usize {
        4 * self.values.len()
    }

    /// `dst [m, n] = lhs [m, k] · self + bias` (or without the bias), `lhs` and `dst`
    /// row-major and dense, on this thread. Every element of `dst` is written; it may start
    /// uninitialised.
    pub(crate) fn product<'a>(
        &self,
        dst: &'a mut [MaybeUninit<f32>],
        lhs: &[f32],
        bias: Option<&[f32]>,
    ) -> &'a mut [f32] {
        let (k, n) = (self.k, self.n);
        let m = lhs.len() / k;
        assert!(
            lhs.len() == m * k && dst.len() == m * n,
            "panels: operands of the wrong size"
        );
        assert!(
            bias.is_none_or(|b| b.len() == n),
            "panels: bias of the wrong size"
        );
        let dst = dst.as_mut_ptr().cast::<f32>();
        for i0 in (0..m).step_by(ROW_TILE) {
            let rows = ROW_TILE.min(m - i0);
            // SAFETY: rows `i0..i0 + rows` are inside `lhs` and `dst` (asserted above), and
            // `supported()` held when `self` was packed.
            unsafe { self.row_tile(dst.add(i0 * n), &lhs[i0 * k..(i0 + rows) * k], bias) };
        }
        // SAFETY: the depth blocks wrote every element of the `[m, n]` matrix (the first
        // without reading it).
        unsafe { std::slice::from_raw_parts_mut(dst, m * n) }
    }

    /// [`Self::product`] for the rows of `lhs` (at most [`ROW_TILE`]), written from `dst` on.
    ///
    /// SAFETY: `dst` must be valid for writes of `lhs.len() / k` rows of `n`, and the CPU must
    /// have AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn row_tile(&self, dst: *mut f32, lhs: &[f32], bias: Option<&[f32]>) {
        let (k, n) = (self.k, self.n);
        let m = lhs.len() / k;
        let padded = n.next_multiple_of(WIDTH);
        for k0 in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - k0);
            let block = &self.values[k0 * padded..(k0 + depth) * padded];
            for (panel, values) in block.chunks_exact(depth * WIDTH).enumerate() {
                let j0 = panel * WIDTH;
                let start = match (k0, bias) {
                    (0, Some(bias)) => Start::Bias(bias[j0..].as_ptr()),
                    (0, None) => Start::Zero,
                    _ => Start::Dst,
                };
                let width = WIDTH.min(n - j0);
                for i in (0..m).step_by(TILE) {
                    let a = lhs[i * k + k0..].as_ptr();
                    // SAFETY: rows `i..i + rows` of `lhs` hold `depth` values from column
                    // `k0`, the panel holds `depth x 16`, and the tile lies in `dst`; the
                    // caller vouches for AVX2 and FMA.
                    unsafe {
                        let c = dst.add(i * n + j0);
                        match m - i {
                            1 => edge::<1>(a, k, values, c, n, width, start),
                            2 => edge::<2>(a, k, values, c, n, width, start),
                            3 => edge::<3>(a, k, values, c, n, width, start),
                            4 => edge::<4>(a, k, values, c, n, width, start),
                            5 => edge::<5>(a, k, values, c, n, width, start),
                            _ => edge::<TILE>(a, k, values, c, n, width, start),
                        }
                    }
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn row_tile(&self, _: *mut f32, _: &[f32], _: Option<&[f32]>) {
        unreachable!("panels are only packed on x86-64")
    }
}

/// Whether this CPU runs the micro-kernel.
fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the micro-kernel is faster here than `gemm`: on a CPU with AVX-512, `gemm` runs
/// its own 512-bit kernels (burn's `x86-v4` feature), faster than this AVX2 kernel and at
/// least as fast as an AVX-512 version of it (`docs/optimization-log.md`, item 11).
fn preferred() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        supported() && !std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The `R x 16` tile at `c` (row stride `ldc`) of which the first `width` columns are real:
/// a full panel goes straight to [`tile`], the last, narrower one through a 16-wide buffer.
///
/// SAFETY: as [`tile`], with only `width` columns of each row of `c` accessible.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn edge<const R: usize>(
    a: *const f32,
    lda: usize,
    panel: &[f32],
    c: *mut f32,
    ldc: usize,
    width: usize,
    start: Start,
) {
    if width == WIDTH {
        // SAFETY: the caller's guarantees, with the whole row of 16 accessible.
        return unsafe { tile::<R>(a, lda, panel, c, ldc, start) };
    }
    let mut buffer = [[0f32; WIDTH]; R];
    let mut padded_bias = [0f32; WIDTH];
    let start = match start {
        Start::Bias(bias) => {
            // SAFETY: the bias has `width` values left from here.
            padded_bias[..width].copy_from_slice(unsafe { std::slice::from_raw_parts(bias, width) });
            Start::Bias(padded_bias.as_ptr())
        }
        Start::Zero => Start::Zero,
        Start::Dst => {
            for (r, row) in buffer.iter_mut().enumerate() {
                // SAFETY: `width` values of row `r` of the tile are initialised (an earlier
                // depth block wrote them).
                row[..width].copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(r * ldc), width) });
            }
            Start::Dst
        }
    };
    // SAFETY: `buffer` is an `R x 16` tile of its own.
    unsafe { tile::<R>(a, lda, panel, buffer.as_mut_ptr().cast(), WIDTH, start) };
    for (r, row) in buffer.iter().enumerate() {
        // SAFETY: row `r` of the tile has `width` values at `c + r * ldc`.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), width) };
    }
}

/// `c[R, 16] = start + a[R, depth] · panel[depth, 16]` (a bias added after the product), `depth = panel.len() / 16`, with
/// `a`'s rows `lda` apart and `c`'s `ldc` apart: 2R accumulators, each step two panel loads
/// and R broadcasts for 2R fused multiply-adds.
///
/// SAFETY: the CPU must have AVX2 and FMA; `a` must hold `R` rows of `depth` values, `c` `R`
/// rows of 16 writable values (initialised with `Start::Dst`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(
    a: *const f32,
    lda: usize,
    panel: &[f32],
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    use std::arch::x86_64::*;
    // SAFETY: all loads and stores stay in the regions the caller vouches for.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        // The bias is added to the finished sum, as PyTorch's and gemm's products add it:
        // starting the sum from it rounds differently, enough to move attention
        // probabilities by 1e-6 through sharp softmaxes.
        let mut bias = None;
        match start {
            Start::Bias(values) => bias = Some([_mm256_loadu_ps(values), _mm256_loadu_ps(values.add(8))]),
            Start::Zero => {}
            Start::Dst => {
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = [
                        _mm256_loadu_ps(c.add(r * ldc)),
                        _mm256_loadu_ps(c.add(r * ldc + 8)),
                    ];
                }
            }
        }
        for (p, values) in panel.chunks_exact(WIDTH).enumerate() {
            let b = [
                _mm256_loadu_ps(values.as_ptr()),
                _mm256_loadu_ps(values.as_ptr().add(8)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                acc[0] = _mm256_fmadd_ps(x, b[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b[1], acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let [low, high] = match bias {
                Some([b0, b1]) => [_mm256_add_ps(acc[0], b0), _mm256_add_ps(acc[1], b1)],
                None => *acc,
            };
            _mm256_storeu_ps(c.add(r * ldc), low);
            _mm256_storeu_ps(c.add(r * ldc + 8), high);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product by definition, in f64.
    fn reference(
        lhs: &[f32],
        (rhs, cs, rs): (&[f32], usize, usize),
        k: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let m = lhs.len() / k;
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let sum: f64 = (0..k)
                    .map(|p| lhs[i * k + p] as f64 * rhs[p * rs + j * cs] as f64)
                    .sum();
                out.push((sum + bias.map_or(0.0, |b| b[j] as f64)) as f32);
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * seed + 3) % 17) as f32 / 8.0 - 1.0)
            .collect()
    }

    #[test]
    fn products_equal_the_definition() {
        if !supported() {
            eprintln!("no AVX2 + FMA: the panels are not used on this CPU");
            return;
        }
        // Rows that are not a multiple of the tile or of the row tile, depths across one and
        // several panel blocks, widths with a narrow last panel or a single one, both strides
        // of the right-hand side, with a bias and without.
        for (m, k, n) in [
            (1, 1, 1),
            (13, 800, 48),
            (100, 384, 37),
            (7, 5, 16),
            (97, 769, 20),
        ] {
            let lhs = values(m * k, 7);
            let rhs = values(k * n, 5);
            let bias = values(n, 3);
            for strides in [(1, n), (k, 1)] {
                let panels = Panels::pack_here((&rhs, strides.0, strides.1), [k, n]).expect("AVX2 + FMA");
                for bias in [Some(&bias[..]), None] {
                    let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
                    let got = panels.product(&mut dst, &lhs, bias).to_vec();
                    let expected = reference(&lhs, (&rhs, strides.0, strides.1), k, n, bias);
                    let worst = got
                        .iter()
                        .zip(&expected)
                        .map(|(g, e)| (g - e).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < 1e-3, "{m}x{k}x{n}, strides {strides:?}: off by {worst}");
                }
            }
        }
    }

    #[test]
    fn the_bias_is_added_to_the_finished_product() {
        if !supported() {
            eprintln!("no AVX2 + FMA: the panels are not used on this CPU");
            return;
        }
        // One depth block, a narrow last panel and a row count that is not a multiple of the
        // tile: with the bias as the sum's starting value, the rounding differs from adding it
        // to the finished sum (PyTorch's and gemm's order).
        let (m, k, n) = (7, 40, 20);
        let lhs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 1.37)
            .collect();
        let rhs: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 / 48.0 - 1.0) * 0.71)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| 1000.0 + j as f32 * 0.123).collect();
        let panels = Panels::pack_here((&rhs, 1, n), [k, n]).expect("AVX2 + FMA");
        let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
        let with_bias = panels.product(&mut dst, &lhs, Some(&bias)).to_vec();
        let mut dst = vec![MaybeUninit::new(f32::NAN); m * n];
        let product = panels.product(&mut dst, &lhs, None).to_vec();
        for (i, (got, sum)) in with_bias.iter().zip(&product).enumerate() {
            assert_eq!(got.to_bits(), (sum + bias[i % n]).to_bits(), "element {i}");
        }
    }
}
