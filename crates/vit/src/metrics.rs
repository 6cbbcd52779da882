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

#[cfg(test)]
mod tests {
    use super::*;

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
