//! Classification metrics from logits and true labels.

use gaze_nn::argmax;
pub use gaze_records::ClassificationMetrics;

/// Metrics over `logits[i]` (one row per image) against `labels[i]`.
pub fn classification_metrics(
    logits: &[Vec<f32>],
    labels: &[usize],
    num_classes: usize,
) -> ClassificationMetrics {
    assert_eq!(logits.len(), labels.len(), "one label per image");
    let mut confusion = vec![vec![0usize; num_classes]; num_classes];
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &label) in logits.iter().zip(labels) {
        let predicted = argmax(row);
        confusion[label][predicted] += 1;
        top1 += usize::from(predicted == label);
        // Rank = how many classes score strictly higher than the true one.
        let rank = row.iter().filter(|&&v| v > row[label]).count();
        top5 += usize::from(rank < 5);
    }
    let n = labels.len().max(1) as f64;
    let per_class = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: usize = row.iter().sum();
            (total > 0).then(|| row[c] as f64 / total as f64)
        })
        .collect();
    ClassificationMetrics {
        images: labels.len(),
        top1: top1 as f64 / n,
        top5: top5 as f64 / n,
        per_class,
        confusion,
    }
}

/// The `k` most probable classes of one image's logits, most probable first (ties: lower
/// label first), with their softmax probabilities (computed in f64, as a stable softmax).
pub fn top_classes(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let exp: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = exp.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exp.iter().map(|e| (e / total) as f32).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_classes_known_answer() {
        let ln2 = std::f32::consts::LN_2;
        let ranked = top_classes(&[0.0, 2.0 * ln2, ln2, 0.0], 3);
        let want = [(1, 0.5), (2, 0.25), (0, 0.125)];
        for ((label, p), (want_label, want_p)) in ranked.iter().zip(want) {
            assert_eq!(*label, want_label);
            assert!((p - want_p).abs() < 1e-7, "{p} {want_p}");
        }
        assert_eq!(ranked.len(), 3);
        assert_eq!(top_classes(&[1e30, 0.0], 1), [(0, 1.0)]);
    }

    #[test]
    fn known_answer() {
        let logits = vec![
            vec![0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0], // true 0, predicted 0
            vec![0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0], // true 1, predicted 0 (rank 1)
            vec![0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], // true 6, rank 6: outside top 5
            vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], // true 2, predicted 2
        ];
        let m = classification_metrics(&logits, &[0, 1, 6, 2], 7);
        assert_eq!(m.top1, 0.5);
        assert_eq!(m.top5, 0.75);
        assert_eq!(m.per_class[0], Some(1.0));
        assert_eq!(m.per_class[1], Some(0.0));
        assert_eq!(m.per_class[3], None);
        assert_eq!(m.confusion[1][0], 1);
        assert_eq!(m.confusion[6][0], 1);
    }
}
