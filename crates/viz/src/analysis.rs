//! The numbers behind the figures, on plain row-major `f32` slices so that any model (or a
//! saved `.npy`) can feed them.

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

/// Cosine similarity of every row of `rows` (`n x dim`) with every other: `n x n`.
/// Accumulates in f64; a zero row has similarity 0 with everything.
pub fn cosine_similarity_matrix(rows: &[f32], dim: usize) -> Vec<f32> {
    assert!(dim > 0 && rows.len().is_multiple_of(dim), "rows must be n x dim");
    let n = rows.len() / dim;
    let norms: Vec<f64> = rows
        .chunks(dim)
        .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt())
        .collect();
    let mut out = vec![0f32; n * n];
    for i in 0..n {
        let a = &rows[i * dim..][..dim];
        for j in i..n {
            let b = &rows[j * dim..][..dim];
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let denom = norms[i] * norms[j];
            let s = if denom > 0.0 { (dot / denom) as f32 } else { 0.0 };
            out[i * n + j] = s;
            out[j * n + i] = s;
        }
    }
    out
}

/// Fuses `[heads, tokens, tokens]` attention into `[tokens, tokens]`.
pub fn fuse_heads(attention: &[f32], heads: usize, fusion: HeadFusion) -> Vec<f32> {
    assert!(
        heads > 0 && attention.len().is_multiple_of(heads),
        "attention must be heads x tokens x tokens"
    );
    let plane = attention.len() / heads;
    let mut out = attention[..plane].to_vec();
    for h in 1..heads {
        for (o, &v) in out.iter_mut().zip(&attention[h * plane..][..plane]) {
            *o = match fusion {
                HeadFusion::Mean => *o + v,
                HeadFusion::Max => o.max(v),
            };
        }
    }
    if fusion == HeadFusion::Mean {
        out.iter_mut().for_each(|v| *v /= heads as f32);
    }
    out
}

/// Row `query` of a `[tokens, tokens]` matrix with the first `prefix` key columns dropped:
/// one value per patch, row-major over the patch grid.
pub fn query_row_over_patches(matrix: &[f32], tokens: usize, query: usize, prefix: usize) -> Vec<f32> {
    matrix[query * tokens + prefix..(query + 1) * tokens].to_vec()
}

/// Attention from the class token (token 0) to every patch, heads fused: `gh * gw` values.
pub fn cls_attention(
    attention: &[f32],
    heads: usize,
    tokens: usize,
    prefix: usize,
    fusion: HeadFusion,
) -> Vec<f32> {
    query_row_over_patches(&fuse_heads(attention, heads, fusion), tokens, 0, prefix)
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            if aik != 0.0 {
                for j in 0..n {
                    out[i * n + j] += aik * b[k * n + j];
                }
            }
        }
    }
    out
}

/// Attention rollout (Abnar & Zuidema 2020) over layers given first to last, each
/// `[heads, tokens, tokens]`: per layer fuse the heads, zero the smallest `discard_ratio`
/// of the weights (never those in the prefix key columns, so the class token keeps its
/// share), add the identity for the residual path, renormalise rows, and multiply the
/// layers together. Returns the `[tokens, tokens]` product (rows sum to 1).
pub fn attention_rollout(
    layers: &[Vec<f32>],
    heads: usize,
    tokens: usize,
    prefix: usize,
    fusion: HeadFusion,
    discard_ratio: f32,
) -> Vec<f32> {
    let n = tokens;
    let mut result: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    for layer in layers {
        let mut a: Vec<f64> = fuse_heads(layer, heads, fusion)
            .into_iter()
            .map(f64::from)
            .collect();
        let discard = ((n * n) as f32 * discard_ratio.clamp(0.0, 1.0)) as usize;
        if discard > 0 {
            let mut order: Vec<usize> = (0..n * n).filter(|i| i % n >= prefix).collect();
            order.sort_by(|&x, &y| a[x].total_cmp(&a[y]));
            for &i in order.iter().take(discard) {
                a[i] = 0.0;
            }
        }
        for i in 0..n {
            a[i * n + i] += 1.0;
            let sum: f64 = a[i * n..(i + 1) * n].iter().sum();
            a[i * n..(i + 1) * n].iter_mut().for_each(|v| *v /= sum);
        }
        result = matmul(&a, &result, n);
    }
    result.into_iter().map(|v| v as f32).collect()
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

/// Labelled `gh * gw` maps of the attention from the class token to the patches; the
/// first map is the headline one (fused, or rollout). `attentions` holds one
/// `[heads, tokens, tokens]` slice per block and `prefix` tokens precede the patches.
pub fn cls_maps(
    attentions: &[Vec<f32>],
    heads: usize,
    tokens: usize,
    prefix: usize,
    which: ClsMaps,
) -> Vec<(String, Vec<f32>)> {
    match which {
        ClsMaps::Fused { layer, fusion } => {
            let name = match fusion {
                HeadFusion::Mean => "mean of heads",
                HeadFusion::Max => "max of heads",
            };
            vec![(
                format!("block {layer}, {name}"),
                cls_attention(&attentions[layer], heads, tokens, prefix, fusion),
            )]
        }
        ClsMaps::EveryHead { layer } => {
            let mut maps = cls_maps(
                attentions,
                heads,
                tokens,
                prefix,
                ClsMaps::Fused {
                    layer,
                    fusion: HeadFusion::Mean,
                },
            );
            let plane = tokens * tokens;
            for h in 0..heads {
                let one = &attentions[layer][h * plane..(h + 1) * plane];
                maps.push((
                    format!("head {h}"),
                    query_row_over_patches(one, tokens, 0, prefix),
                ));
            }
            maps
        }
        ClsMaps::Rollout {
            fusion,
            discard_ratio,
        } => {
            let rolled = attention_rollout(attentions, heads, tokens, prefix, fusion, discard_ratio);
            vec![(
                "rollout".into(),
                query_row_over_patches(&rolled, tokens, 0, prefix),
            )]
        }
    }
}

/// Rescales `values` to [0, 1] by their min and max (all equal: all 0). Returns the range.
pub fn normalize(values: &[f32]) -> (Vec<f32>, f32, f32) {
    let lo = values.iter().cloned().fold(f32::INFINITY, f32::min);
    let hi = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    let out = values
        .iter()
        .map(|&v| if span > 0.0 { (v - lo) / span } else { 0.0 })
        .collect();
    (out, lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn cosine_known_answers() {
        let rows = [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0, 0.0];
        let s = cosine_similarity_matrix(&rows, 2);
        let r = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            close(
                &s,
                &[
                    1.0, 0.0, r, 0.0, 0.0, 1.0, r, 0.0, r, r, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0
                ]
            ),
            "{s:?}"
        );
    }

    #[test]
    fn head_fusion_mean_and_max() {
        // 2 heads of 2x2.
        let a = [0.2, 0.8, 0.5, 0.5, 0.6, 0.4, 0.1, 0.9];
        assert!(close(&fuse_heads(&a, 2, HeadFusion::Mean), &[0.4, 0.6, 0.3, 0.7]));
        assert!(close(&fuse_heads(&a, 2, HeadFusion::Max), &[0.6, 0.8, 0.5, 0.9]));
        assert!(close(&cls_attention(&a, 2, 2, 1, HeadFusion::Mean), &[0.6]));
    }

    #[test]
    fn rollout_of_one_layer_adds_identity_and_renormalises() {
        // One head, 3 tokens: (A + I) / 2 since rows of A sum to 1.
        let a = vec![0.5, 0.25, 0.25, 0.1, 0.6, 0.3, 0.2, 0.2, 0.6];
        let r = attention_rollout(std::slice::from_ref(&a), 1, 3, 1, HeadFusion::Mean, 0.0);
        let want: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| (v + if i % 4 == 0 { 1.0 } else { 0.0 }) / 2.0)
            .collect();
        assert!(close(&r, &want), "{r:?}");
        // Two layers multiply, later layer on the left; rows still sum to 1.
        let b = vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0];
        let r2 = attention_rollout(&[a.clone(), b.clone()], 1, 3, 1, HeadFusion::Mean, 0.0);
        let bh: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(i, v)| (v + if i % 4 == 0 { 1.0 } else { 0.0 }) / 2.0)
            .collect();
        for i in 0..3 {
            for j in 0..3 {
                let want: f32 = (0..3).map(|k| bh[i * 3 + k] * r[k * 3 + j]).sum();
                assert!((r2[i * 3 + j] - want).abs() < 1e-6);
            }
            assert!((r2[i * 3..i * 3 + 3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn discarding_spares_the_class_column() {
        // The class column holds the smallest weights, yet survives a 50 % discard.
        let a = vec![0.01, 0.49, 0.5, 0.02, 0.48, 0.5, 0.03, 0.47, 0.5];
        let r = attention_rollout(&[a], 1, 3, 1, HeadFusion::Mean, 0.5);
        assert!(r[3] > 0.0 && r[6] > 0.0, "{r:?}");
        // 4 of the 6 non-class weights (the smallest) are gone: 0.47, 0.48, 0.49 and one 0.5.
        let zeros = (0..9).filter(|&i| i % 3 != 0 && r[i] == 0.0).count();
        assert_eq!(zeros, 3, "{r:?}"); // one of the four zeroed is on the diagonal, refilled by I
        for i in 0..3 {
            assert!((r[i * 3..i * 3 + 3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn normalize_handles_flat_input() {
        assert_eq!(normalize(&[2.0, 2.0]).0, vec![0.0, 0.0]);
        assert_eq!(normalize(&[1.0, 3.0, 2.0]).0, vec![0.0, 1.0, 0.5]);
    }
}
