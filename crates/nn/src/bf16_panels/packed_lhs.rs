//! A left-hand matrix packed once for two products, `A ·` and `Aᵀ ·`: attention's dS, which
//! the softmax backward finishes two rows at a time and which multiplies both the keys
//! (`dQ = dS K`) and the queries (`dK = dSᵀ Q`). Packing while the two rows are in L1 spares
//! each product its own pass over the f32 matrix. The rows come a block at a time, each as
//! soon as the product that computes dP has finished it, while it is still in L2.

use super::{Bf16Kernel, Bf16Panels, ROW_TILE, interleave_pairs, row_as_pairs};

/// `m` rows of `k` values as bf16 pairs in [`Bf16Panels::product_raw`]'s row tiles: a tile
/// of up to [`ROW_TILE`] rows from row `i0` on starts at `i0 * k.div_ceil(2)` and holds its
/// rows one after another, or, `pair_major`, its rows' first pairs, then their second pairs...
pub(crate) struct PackedLhs<'a> {
    values: &'a [u32],
    m: usize,
    k: usize,
    pair_major: bool,
}

/// An `[m, k]` row-major matrix packed as the left-hand side of `a ·` and of `aᵀ ·`, into
/// two buffers (grown as needed, reused between calls), given a block of rows at a time in
/// order ([`Self::pack`]).
pub(crate) struct BothWays<'a> {
    rows: &'a mut Vec<u32>,
    columns: &'a mut Vec<u32>,
    m: usize,
    k: usize,
    /// The first row not packed yet.
    next: usize,
    /// A row of zeros, the partner of an odd last row.
    zeros: Vec<f32>,
}

impl<'a> BothWays<'a> {
    pub(crate) fn new([m, k]: [usize; 2], (rows, columns): (&'a mut Vec<u32>, &'a mut Vec<u32>)) -> Self {
        rows.resize(m * k.div_ceil(2), 0);
        columns.resize(k * m.div_ceil(2), 0);
        Self {
            rows,
            columns,
            m,
            k,
            next: 0,
            zeros: vec![0f32; k],
        }
    }

    /// Packs the next rows, `block` (an even number of them but for the last block). Two rows
    /// at a time, `finish(i, rows)` first completes rows `i` and `i + 1` (the last row alone
    /// when `m` is odd) in place.
    pub(crate) fn pack(&mut self, block: &mut [f32], mut finish: impl FnMut(usize, &mut [f32])) {
        let (m, k) = (self.m, self.k);
        let (row_pairs, column_pairs) = (k.div_ceil(2), m.div_ceil(2));
        let rows_given = block.len() / k;
        assert!(
            block.len() == rows_given * k && self.next + rows_given <= m,
            "bf16 panels: rows beyond the packed matrix"
        );
        assert!(
            rows_given % 2 == 0 || self.next + rows_given == m,
            "bf16 panels: an odd block of rows before the last"
        );
        let first_pair = self.next / 2;
        for (p, two) in (first_pair..).zip(block.chunks_mut(2 * k)) {
            finish(2 * p, two);
            for (row, out) in two
                .chunks_exact(k)
                .zip(self.rows[2 * p * row_pairs..].chunks_exact_mut(row_pairs))
            {
                row_as_pairs(out, row);
            }
            let (first, second) = if two.len() == 2 * k {
                two.split_at(k)
            } else {
                (&*two, &self.zeros[..])
            };
            for j0 in (0..k).step_by(ROW_TILE) {
                let tile = ROW_TILE.min(k - j0);
                let out = &mut self.columns[j0 * column_pairs + p * tile..][..tile];
                // SAFETY: a `u32` is a valid `MaybeUninit<u32>`, and every write is initialised.
                let out = unsafe { &mut *(out as *mut [u32] as *mut [std::mem::MaybeUninit<u32>]) };
                interleave_pairs(out, &first[j0..j0 + tile], &second[j0..j0 + tile]);
            }
        }
        self.next += rows_given;
    }

    /// The two left-hand sides, `a` and `aᵀ`, once every row is packed.
    pub(crate) fn packed(self) -> [PackedLhs<'a>; 2] {
        assert_eq!(self.next, self.m, "bf16 panels: rows left to pack");
        [
            PackedLhs {
                values: self.rows,
                m: self.m,
                k: self.k,
                pair_major: false,
            },
            PackedLhs {
                values: self.columns,
                m: self.k,
                k: self.m,
                pair_major: true,
            },
        ]
    }
}

impl Bf16Panels {
    /// [`Self::product_raw`] without a bias for a left-hand side packed beforehand.
    ///
    /// SAFETY: as [`Self::product_raw`], for `lhs.m` rows.
    pub(crate) unsafe fn product_packed(
        &self,
        kernel: Bf16Kernel,
        (dst, ldc): (*mut f32, usize),
        lhs: &PackedLhs,
    ) {
        assert_eq!(lhs.k, self.k, "bf16 panels: lhs of the wrong depth");
        assert!(ldc >= self.n, "bf16 panels: rows of dst overlap");
        kernel.assert_runs_here();
        let pairs = lhs.k.div_ceil(2);
        for i0 in (0..lhs.m).step_by(ROW_TILE) {
            let tile = ROW_TILE.min(lhs.m - i0);
            let rows = &lhs.values[i0 * pairs..][..tile * pairs];
            let strides = if lhs.pair_major { (1, tile) } else { (pairs, 1) };
            // SAFETY: rows `i0..i0 + tile` of `dst` are the caller's; the kernel runs here.
            unsafe {
                self.row_tile(
                    kernel,
                    (dst.add(i0 * ldc), ldc),
                    (rows, tile, strides),
                    Default::default(),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{definition, kernels, values};
    use super::*;

    #[test]
    fn both_products_of_a_packed_matrix_equal_the_definition_bit_for_bit() {
        // Odd and even sizes, more than one row tile each way, a depth beyond one panel block.
        for (m, k, n) in [
            (1, 1, 3),
            (7, 5, 33),
            (97, 120, 40),
            (200, 387, 64),
            (385, 96, 32),
        ] {
            let a = values(m * k, 5);
            let (right, left) = (values(k * n, 6), values(m * n, 7));
            let (mut rows, mut columns) = (Vec::new(), Vec::new());
            let mut finished = a.clone();
            let mut seen = Vec::new();
            let mut both = BothWays::new([m, k], (&mut rows, &mut columns));
            // Blocks of 2, 4, 6... rows, the last one what is left.
            let mut rest = &mut finished[..];
            for block_rows in (2..).step_by(2) {
                if rest.is_empty() {
                    break;
                }
                let (block, after) = rest.split_at_mut((block_rows * k).min(rest.len()));
                both.pack(block, |i, two| {
                    seen.push((i, two.len()));
                    two.iter_mut().for_each(|x| *x *= 3.0);
                });
                rest = after;
            }
            let [packed, transposed] = both.packed();
            let want_seen: Vec<_> = (0..m).step_by(2).map(|i| (i, k * (m - i).min(2))).collect();
            assert_eq!(seen, want_seen, "{m}x{k}: finish saw other rows");
            let tripled: Vec<f32> = a.iter().map(|x| x * 3.0).collect();
            for kernel in kernels() {
                for (lhs, lhs_strides, rhs, [rows, depth]) in [
                    (&packed, (1, k), &right, [m, k]),
                    (&transposed, (k, 1), &left, [k, m]),
                ] {
                    let panels = Bf16Panels::pack((rhs, 1, n), [depth, n]);
                    let want = definition(
                        (&tripled, lhs_strides.0, lhs_strides.1),
                        (rhs, 1, n),
                        [rows, depth, n],
                        None,
                    );
                    let mut got = vec![f32::NAN; rows * (n + 3)];
                    // SAFETY: `got` holds `rows` rows of `n + 3`.
                    unsafe { panels.product_packed(kernel, (got.as_mut_ptr(), n + 3), lhs) };
                    for i in 0..rows {
                        for j in 0..n {
                            let (g, w) = (got[i * (n + 3) + j], want[i * n + j]);
                            assert_eq!(
                                g.to_bits(),
                                w.to_bits(),
                                "{kernel:?} {rows}x{depth}x{n} ({i}, {j}): {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}
