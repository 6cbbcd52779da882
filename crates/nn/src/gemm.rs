//! Matrix products on `f32` slices through the `gemm` crate (the one `flex` itself uses), with
//! strided operands so that transposes cost nothing, and row blocks spread over the cores.

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::bf16_panels::Bf16Panels;
use crate::flex::written;
use crate::panels::Panels;

/// A 2-D `flex` matrix read where it lies, with its element strides (a transposed weight
/// is not copied).
pub(crate) struct Operand<'a> {
    pub(crate) tensor: &'a FloatTensor<Flex>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Column and row strides, in elements.
    pub(crate) cs: usize,
    pub(crate) rs: usize,
}

impl<'a> Operand<'a> {
    pub(crate) fn new(tensor: &'a FloatTensor<Flex>) -> Self {
        let dims = tensor.layout().shape().to_vec();
        let [rows, cols] = dims[..] else {
            panic!("linear takes a [d_in, d_out] weight, got {dims:?}")
        };
        let strides = tensor.layout().strides();
        assert!(
            strides.iter().all(|&s| s >= 0),
            "linear: a flipped weight is not supported"
        );
        Self {
            tensor,
            rows,
            cols,
            cs: strides[1] as usize,
            rs: strides[0] as usize,
        }
    }

    /// The storage from the first element on.
    pub(crate) fn values(&self) -> &'a [f32] {
        &self.tensor.storage::<f32>()[self.tensor.layout().start_offset()..]
    }

    /// The matrix packed for [`product_rows`], where the CPU runs [`Panels`].
    pub(crate) fn panels(&self) -> Option<Panels> {
        Panels::pack((self.values(), self.cs, self.rs), [self.rows, self.cols])
    }

    /// The matrix rounded and packed for [`crate::bf16_panels::product_rows_bf16`].
    pub(crate) fn bf16_panels(&self) -> Bf16Panels {
        Bf16Panels::pack((self.values(), self.cs, self.rs), [self.rows, self.cols])
    }
}

/// Rows per task of [`product_rows`]: about half a 577-token image's worth at
/// ViT-S/16-384, and at least one block per core while blocks keep 48 rows. Row blocks run
/// faster than one GEMM split by gemm itself, and small blocks keep the cores' idle tail at
/// the end of each product short (`docs/optimization-log.md`, item 15). 48 rows or fewer
/// stay one GEMM over all the cores. Blocks are whole tiles of both micro-kernels where they
/// are longer than one, so that no block ends in a one-row tile (which runs at a fraction of
/// the kernel's speed); the rows left over make one short block.
pub(crate) fn block_rows(rows: usize) -> usize {
    const ABOUT: usize = 300;
    /// A multiple of the f32 and the bf16 micro-kernels' tile rows.
    const TILES: usize = 12;
    const _: () = assert!(TILES % crate::panels::TILE == 0 && TILES % crate::bf16_panels::TILE == 0);
    let cores = rayon::current_num_threads().min(rows.div_ceil(48));
    let blocks = rows.div_ceil(ABOUT).max(cores).max(1);
    let block = rows.div_ceil(blocks).max(1);
    if block > TILES {
        block / TILES * TILES
    } else {
        block
    }
}

/// `lhs [rows, k] · rhs [k, n] (+ bias)` as a new row-major `[rows, n]`, the lhs dense and
/// the rhs given with its (column, row) strides, and also as `panels` where the CPU prefers
/// them ([`Panels::pack`]). Row blocks of about [`block_rows`], at least one per core, are
/// tasks of one single-threaded product each. Without panels the tasks are `gemm` calls,
/// the bias copied into each block just before its GEMM adds onto it.
pub(crate) fn product_rows(
    (lhs, rows, k): (&[f32], usize, usize),
    (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
    n: usize,
    bias: Option<&[f32]>,
    panels: Option<&Panels>,
) -> Vec<f32> {
    assert!(bias.is_none_or(|b| b.len() == n));
    // An empty batch (which `flex`'s own matmul does not survive) or an empty layer.
    if rows * n == 0 {
        return Vec::new();
    }
    if k == 0 {
        return bias.map_or_else(|| vec![0f32; rows * n], |b| b.repeat(rows));
    }
    assert!(lhs.len() >= rows * k);
    let block = block_rows(rows);
    if let Some(panels) = panels {
        let fill = |out: &mut [MaybeUninit<f32>]| {
            out.par_chunks_mut(block * n)
                .zip(lhs[..rows * k].par_chunks(block * k))
                .for_each(|(dst, lhs)| {
                    panels.product(dst, lhs, bias);
                })
        };
        // SAFETY: `Panels::product` writes every element of its block.
        return unsafe { written(rows * n, fill) };
    }
    let parallelism = if block == rows {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(block * n)
            .zip(lhs[..rows * k].par_chunks(block * k))
            .for_each(|(dst, lhs)| {
                let m = dst.len() / n;
                if let Some(bias) = bias {
                    for row in dst.chunks_exact_mut(n) {
                        row.write_copy_of_slice(bias);
                    }
                }
                // SAFETY: `dst` is this task's own `[m, n]` block, read only after the bias was
                // written into it.
                unsafe {
                    gemm_raw(
                        (dst.as_mut_ptr().cast::<f32>(), n, bias.is_some()),
                        [m, n, k],
                        (lhs, 1, k),
                        (rhs, rhs_cs, rhs_rs),
                        1.0,
                        parallelism,
                    )
                }
            })
    };
    // SAFETY: every block is written, by the bias copy and the GEMM or by the GEMM alone.
    unsafe { written(rows * n, fill) }
}

/// `dst[m, n] = scale * lhs[m, k] rhs[k, n]` on this thread, each operand given with its
/// (column, row) strides in elements, so transposes cost nothing. `dst` may start
/// uninitialised (the GEMM does not read it) and is returned initialised.
pub(crate) fn matmul<'a>(
    dst: &'a mut [MaybeUninit<f32>],
    [m, n, k]: [usize; 3],
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    scale: f32,
) -> &'a mut [f32] {
    gemm_into(dst, [m, n, k], lhs, rhs, scale, gemm::Parallelism::None)
}

/// [`matmul`] with the given parallelism.
pub(crate) fn gemm_into<'a>(
    dst: &'a mut [MaybeUninit<f32>],
    [m, n, k]: [usize; 3],
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    scale: f32,
    parallelism: gemm::Parallelism,
) -> &'a mut [f32] {
    assert!(dst.len() >= m * n);
    let dst = dst.as_mut_ptr().cast::<f32>();
    // SAFETY: `dst` holds `[m, n]` and is borrowed exclusively; the GEMM writes every
    // element without reading it, after which the slice is initialised.
    unsafe {
        gemm_raw((dst, n, false), [m, n, k], lhs, rhs, scale, parallelism);
        std::slice::from_raw_parts_mut(dst, m * n)
    }
}

/// `dst[m, n] = scale * lhs[m, k] rhs[k, n]`, or `+=` with `add`, `dst` row-major with row
/// stride `dst_rs`.
///
/// SAFETY: `dst` must be valid for reads (with `add`) and writes of the `[m, n]` matrix at
/// that stride, initialised if `add`, and no one else may access it meanwhile.
pub(crate) unsafe fn gemm_raw(
    (dst, dst_rs, add): (*mut f32, usize, bool),
    [m, n, k]: [usize; 3],
    (lhs, lhs_cs, lhs_rs): (&[f32], usize, usize),
    (rhs, rhs_cs, rhs_rs): (&[f32], usize, usize),
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    let last = |rows: usize, cols: usize, cs: usize, rs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m * n * k > 0 && dst_rs >= n);
    assert!(last(m, k, lhs_cs, lhs_rs) < lhs.len() && last(k, n, rhs_cs, rhs_rs) < rhs.len());
    // SAFETY: the asserts keep every strided read inside its slice; the caller vouches
    // for `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            add,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if add { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_are_whole_tiles_but_the_last() {
        // A ViT-S/16-384 batch of 8 (577 tokens each): blocks of 289 rows would each end in
        // a one-row tile.
        assert_eq!(block_rows(8 * 577) % 12, 0);
        for rows in 1..3000 {
            let block = block_rows(rows);
            assert!(
                block >= 1 && (block <= 12 || block % 12 == 0),
                "{rows} rows: {block}"
            );
        }
    }
}
