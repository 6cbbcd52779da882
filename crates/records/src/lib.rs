//! The JSON records that gaze's commands write and other programs (`cargo xtask
//! reproduce`, tests, users' scripts) read back. One type per file format, so that a change
//! of format is a change of type that every reader sees at compile time.

use serde::{Deserialize, Serialize};

/// `gaze eval --json`: top-1/top-5 accuracy, per-class accuracy and the confusion matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Accuracy of each true class; `None` for classes with no images.
    pub per_class: Vec<Option<f64>>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// `gaze predict`: one image's predicted class, with what the options add (`--json` also
/// has the logits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The image's file name, without its folder.
    pub filename: String,
    pub label: usize,
    /// The class's name (`--with-names`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The softmax probability of `label` (`--probabilities`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f32>,
    /// The K most probable classes, most probable first (`--top-k K`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Vec<RankedClass>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logits: Vec<f32>,
}

/// One of an image's most probable classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedClass {
    pub label: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub probability: f32,
}

/// The predictions CSV: the course's `filename,label` (a name quoted only where it holds a
/// comma, a quote or a line break), then the columns the first prediction has: `name`,
/// `probability`, and for each of its top-k classes `top{i}_label`, `top{i}_name`,
/// `top{i}_probability`.
pub fn predictions_csv(predictions: &[Prediction]) -> Vec<u8> {
    let first = predictions.first();
    let with_name = first.is_some_and(|p| p.name.is_some());
    let with_probability = first.is_some_and(|p| p.probability.is_some());
    let top_k = first.and_then(|p| p.top_k.as_ref()).map_or(0, Vec::len);
    let mut header: Vec<String> = vec!["filename".into(), "label".into()];
    if with_name {
        header.push("name".into());
    }
    if with_probability {
        header.push("probability".into());
    }
    for i in 1..=top_k {
        header.push(format!("top{i}_label"));
        if with_name {
            header.push(format!("top{i}_name"));
        }
        header.push(format!("top{i}_probability"));
    }
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut write = || -> csv::Result<()> {
        writer.write_record(&header)?;
        for p in predictions {
            let mut row = vec![p.filename.clone(), p.label.to_string()];
            if with_name {
                row.push(p.name.clone().unwrap_or_default());
            }
            if with_probability {
                row.push(p.probability.map(|v| v.to_string()).unwrap_or_default());
            }
            for ranked in p.top_k.iter().flatten().take(top_k) {
                row.push(ranked.label.to_string());
                if with_name {
                    row.push(ranked.name.clone().unwrap_or_default());
                }
                row.push(ranked.probability.to_string());
            }
            writer.write_record(&row)?;
        }
        writer.flush()?;
        Ok(())
    };
    write().expect("writing to memory cannot fail");
    writer.into_inner().expect("flushed above")
}

/// `gaze attention --json`, one per image: the [class] token's attention to every patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionRecord {
    /// Patch grid `[rows, columns]`.
    pub grid: [usize; 2],
    /// One value per patch, row-major over the grid.
    pub cls_attention: Vec<f32>,
    /// Predicted class.
    pub label: usize,
    /// Its name, when class names were given.
    pub name: Option<String>,
    pub probability: f32,
}

/// One word of a caption: its text and the decoding steps of its word pieces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordRecord {
    pub text: String,
    /// Indices into `token_ids` / `attention` of this word's pieces.
    pub steps: Vec<usize>,
}

/// `gaze caption --json`, one per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionRecord {
    pub caption: String,
    pub token_ids: Vec<usize>,
    /// Feature grid `[rows, columns]`.
    pub feat_grid: [usize; 2],
    /// One `[h][w]` map per generated token (row k of the last decoder layer's
    /// cross-attention at step k).
    pub attention: Vec<Vec<Vec<f32>>>,
    /// The map of the step that chose [SEP], when the caption ended before the limit.
    pub end_attention: Option<Vec<Vec<f32>>>,
    pub words: Vec<WordRecord>,
}

/// How well a captioner does on a split, by greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionScores {
    /// Share of images whose caption equals the reference, word for word.
    pub exact_match: f64,
    /// On exactly captioned images: share of colour and shape words whose attention peak (the
    /// centre of the arg-max feature cell) lies inside the box of the object the word names.
    pub pointing_accuracy: f64,
    /// The same share for a cell drawn uniformly at random (the pointing baseline).
    pub pointing_chance: f64,
    /// Colour and shape words scored.
    pub pointed_words: usize,
    pub images: usize,
}

/// `summary.json` of a `gaze caption-train` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionSummary {
    pub train_images: usize,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    /// Teacher-forced token accuracy on the validation split after the last epoch.
    pub val_token_accuracy: Option<f64>,
    pub val: CaptionScores,
}

/// One object of a synthetic scene (`captions.json` of `gaze synth --captions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub colour: String,
    pub shape: String,
    /// `[x0, y0, x1, y1]` in pixels, end exclusive.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
}

/// One image of a synthetic scene set: its caption and objects in caption order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneRecord {
    pub caption: String,
    pub objects: Vec<SceneObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_csv_quotes_only_what_needs_it_and_reads_back() {
        let names = ["26_5064.jpg", "a,b.jpg", "say \"cheese\".png", "two\nlines.jpg"];
        let predictions: Vec<Prediction> = names
            .iter()
            .enumerate()
            .map(|(label, name)| Prediction {
                filename: name.to_string(),
                label,
                name: None,
                probability: None,
                top_k: None,
                logits: vec![],
            })
            .collect();
        let bytes = predictions_csv(&predictions);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("filename,label\n26_5064.jpg,0\n"), "{text}");
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        let rows: Vec<(String, usize)> = reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_string(), r[1].parse().unwrap())
            })
            .collect();
        let want: Vec<(String, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn predictions_csv_adds_names_probabilities_and_top_k_columns() {
        let ranked = |label: usize, name: &str, probability: f32| RankedClass {
            label,
            name: Some(name.into()),
            probability,
        };
        let p = Prediction {
            filename: "x.jpg".into(),
            label: 2,
            name: Some("Bengal".into()),
            probability: Some(0.75),
            top_k: Some(vec![ranked(2, "Bengal", 0.75), ranked(0, "Abyssinian", 0.25)]),
            logits: vec![],
        };
        let text = String::from_utf8(predictions_csv(&[p])).unwrap();
        assert_eq!(
            text,
            "filename,label,name,probability,top1_label,top1_name,top1_probability,top2_label,top2_name,top2_probability\n\
             x.jpg,2,Bengal,0.75,2,Bengal,0.75,0,Abyssinian,0.25\n"
        );
    }
}
