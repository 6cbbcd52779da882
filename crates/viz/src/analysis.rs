//! The numbers behind the figures, on `ndarray` arrays (`[heads, tokens, tokens]`
//! attention, `[n, n]` similarities, `[rows, cols]` maps) so that any model, or a saved
//! `.npy`, can feed them.

use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, Axis, s};

/// How attention heads are combined into one map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadFusion {
    #[default]
    Mean,
    Max,
}

impl std::str::FromStr for HeadFusion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(HeadFusion::Mean),
            "max" => Ok(HeadFusion::Max),
            other => Err(format!("unknown head fusion `{other}`; use mean or max")),
        }
    }
}

/// Cosine similarity of every row of `rows` (`[n, dim]`) with every other: `[n, n]`.
/// Accumulates in f64; a zero row has similarity 0 with everything.
pub fn cosine_similarity_matrix(rows: ArrayView2<f32>) -> Array2<f32> {
    let rows = rows.mapv(f64::from);
    let norms: Array1<f64> = rows.map_axis(Axis(1), |r| r.dot(&r).sqrt());
    let dots = rows.dot(&rows.t());
    Array2::from_shape_fn(dots.dim(), |(i, j)| {
        let denom = norms[i] * norms[j];
        if denom > 0.0 {
            (dots[[i, j]] / denom) as f32
        } else {
            0.0
        }
    })
}

/// Fuses `[heads, tokens, tokens]` attention into `[tokens, tokens]`.
pub fn fuse_heads(attention: ArrayView3<f32>, fusion: HeadFusion) -> Array2<f32> {
    assert!(attention.dim().0 > 0, "attention has no heads");
    match fusion {
        HeadFusion::Mean => attention.mean_axis(Axis(0)).expect("at least one head"),
        HeadFusion::Max => attention.fold_axis(Axis(0), f32::NEG_INFINITY, |m, &v| m.max(v)),
    }
}

/// Row `query` of a `[tokens, tokens]` matrix with the first `prefix` key columns dropped,
/// as the `grid` of patches.
pub fn query_row_over_patches(
    matrix: ArrayView2<f32>,
    query: usize,
    prefix: usize,
    grid: (usize, usize),
) -> Array2<f32> {
    matrix
        .slice(s![query, prefix..])
        .to_owned()
        .into_shape_with_order(grid)
        .expect("the patches fill the grid")
}

/// Attention from the class token (token 0) to every patch, heads fused, as the `grid`.
pub fn cls_attention(
    attention: ArrayView3<f32>,
    prefix: usize,
    grid: (usize, usize),
    fusion: HeadFusion,
) -> Array2<f32> {
    query_row_over_patches(fuse_heads(attention, fusion).view(), 0, prefix, grid)
}

/// Attention rollout (Abnar & Zuidema 2020) over layers given first to last, each
/// `[heads, tokens, tokens]`: per layer fuse the heads, zero the smallest `discard_ratio`
/// of the weights (never those in the prefix key columns, so the class token keeps its
/// share), add the identity for the residual path, renormalise rows, and multiply the
/// layers together. Returns the `[tokens, tokens]` product (rows sum to 1).
pub fn attention_rollout(
    layers: &[Array3<f32>],
    prefix: usize,
    fusion: HeadFusion,
    discard_ratio: f32,
) -> Array2<f32> {
    let n = layers.first().map_or(0, |l| l.dim().1);
    let mut result = Array2::<f64>::eye(n);
    for layer in layers {
        let mut a = fuse_heads(layer.view(), fusion).mapv(f64::from);
        let discard = ((n * n) as f32 * discard_ratio.clamp(0.0, 1.0)) as usize;
        if discard > 0 {
            let mut order: Vec<(usize, usize)> =
                (0..n).flat_map(|i| (prefix..n).map(move |j| (i, j))).collect();
            order.sort_by(|&x, &y| a[x].total_cmp(&a[y]));
            for &at in order.iter().take(discard) {
                a[at] = 0.0;
            }
        }
        a += &Array2::<f64>::eye(n);
        for mut row in a.rows_mut() {
            let sum = row.sum();
            row /= sum;
        }
        result = a.dot(&result);
    }
    result.mapv(|v| v as f32)
}

/// Which [class]-attention maps to draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClsMaps {
    /// One map from block `layer`, heads fused.
    Fused { layer: usize, fusion: HeadFusion },
    /// The head-mean map of block `layer`, then one map per head.
    EveryHead { layer: usize },
    /// Attention rollout through all blocks.
    Rollout { fusion: HeadFusion, discard_ratio: f32 },
}

/// Labelled maps (each the `grid` of patches) of the attention from the class token to the
/// patches; the first map is the headline one (fused, or rollout). `attentions` holds one
/// `[heads, tokens, tokens]` array per block and `prefix` tokens precede the patches.
pub fn cls_maps(
    attentions: &[Array3<f32>],
    prefix: usize,
    grid: (usize, usize),
    which: ClsMaps,
) -> Vec<(String, Array2<f32>)> {
    match which {
        ClsMaps::Fused { layer, fusion } => {
            let name = match fusion {
                HeadFusion::Mean => "mean of heads",
                HeadFusion::Max => "max of heads",
            };
            vec![(
                format!("block {layer}, {name}"),
                cls_attention(attentions[layer].view(), prefix, grid, fusion),
            )]
        }
        ClsMaps::EveryHead { layer } => {
            let fused = ClsMaps::Fused {
                layer,
                fusion: HeadFusion::Mean,
            };
            let mut maps = cls_maps(attentions, prefix, grid, fused);
            for (h, one) in attentions[layer].outer_iter().enumerate() {
                maps.push((format!("head {h}"), query_row_over_patches(one, 0, prefix, grid)));
            }
            maps
        }
        ClsMaps::Rollout {
            fusion,
            discard_ratio,
        } => {
            let rolled = attention_rollout(attentions, prefix, fusion, discard_ratio);
            vec![(
                "rollout".into(),
                query_row_over_patches(rolled.view(), 0, prefix, grid),
            )]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, b: &ndarray::Array<f32, D>) -> bool {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn cosine_known_answers() {
        let rows = array![[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]];
        let s = cosine_similarity_matrix(rows.view());
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let want = array![
            [1.0, 0.0, r, 0.0],
            [0.0, 1.0, r, 0.0],
            [r, r, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0]
        ];
        assert!(close(&s, &want), "{s:?}");
    }

    #[test]
    fn head_fusion_mean_and_max() {
        let a = array![[[0.2, 0.8], [0.5, 0.5]], [[0.6, 0.4], [0.1, 0.9]]];
        assert!(close(
            &fuse_heads(a.view(), HeadFusion::Mean),
            &array![[0.4, 0.6], [0.3, 0.7]]
        ));
        assert!(close(
            &fuse_heads(a.view(), HeadFusion::Max),
            &array![[0.6, 0.8], [0.5, 0.9]]
        ));
        assert!(close(
            &cls_attention(a.view(), 1, (1, 1), HeadFusion::Mean),
            &array![[0.6]]
        ));
    }

    #[test]
    fn rollout_of_one_layer_adds_identity_and_renormalises() {
        // One head, 3 tokens: (A + I) / 2 since rows of A sum to 1.
        let a = array![[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]];
        let r = attention_rollout(std::slice::from_ref(&a), 1, HeadFusion::Mean, 0.0);
        let half = |m: &Array3<f32>| (&m.index_axis(Axis(0), 0) + &Array2::<f32>::eye(3)) / 2.0;
        assert!(close(&r, &half(&a)), "{r:?}");
        // Two layers multiply, later layer on the left; rows still sum to 1.
        let b = array![[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]];
        let r2 = attention_rollout(&[a.clone(), b.clone()], 1, HeadFusion::Mean, 0.0);
        assert!(close(&r2, &half(&b).dot(&r)), "{r2:?}");
        for row in r2.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn discarding_spares_the_class_column() {
        // The class column holds the smallest weights, yet survives a 50 % discard.
        let a = array![[[0.01, 0.49, 0.5], [0.02, 0.48, 0.5], [0.03, 0.47, 0.5]]];
        let r = attention_rollout(&[a], 1, HeadFusion::Mean, 0.5);
        assert!(r[[1, 0]] > 0.0 && r[[2, 0]] > 0.0, "{r:?}");
        // 4 of the 6 non-class weights (the smallest) are gone: 0.47, 0.48, 0.49 and one 0.5.
        let zeros = r
            .indexed_iter()
            .filter(|((_, j), v)| *j != 0 && **v == 0.0)
            .count();
        assert_eq!(zeros, 3, "{r:?}"); // one of the four zeroed is on the diagonal, refilled by I
        for row in r.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn every_head_maps_follow_the_mean() {
        let a = array![
            [[0.2, 0.8, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            [[0.6, 0.1, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        ];
        let maps = cls_maps(&[a], 1, (1, 2), ClsMaps::EveryHead { layer: 0 });
        let labels: Vec<&str> = maps.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["block 0, mean of heads", "head 0", "head 1"]);
        assert!(close(&maps[0].1, &array![[0.45, 0.15]]));
        assert!(close(&maps[2].1, &array![[0.1, 0.3]]));
    }
}
