//! The classification half: train the ViT, evaluate it, write the predictions CSV, and draw
//! the position-embedding similarity and the [class] attention of three validation images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use gaze_data::boxes::{attention_share_in_box, box_area_share};
use gaze_records::{AttentionRecord, ClassificationMetrics};

use super::Summary;
use super::report::Section;
use super::runner::{Runner, arg, read_json};

/// Where the classification half reads and writes.
pub struct Classification<'a> {
    pub root: &'a Path,
    pub out: &'a Path,
    /// The course data root (`p1_data` inside), or `None` for the synthetic set.
    pub data: Option<&'a Path>,
    pub vit_weights: Option<&'a Path>,
}

impl Classification<'_> {
    fn synthetic(&self) -> bool {
        self.data.is_none()
    }

    /// Runs every step, fills in `summary` and returns the report's sections.
    pub fn run(&self, r: &mut Runner, summary: &mut Summary) -> Result<Vec<Section>> {
        let (out, figures, vit) = (self.out, self.out.join("figures"), self.out.join("vit"));
        let (data_root, config) = self.data_and_config(r)?;
        let (train_dir, val_dir) = (data_root.join("train"), data_root.join("val"));
        let best = vit.join("best.safetensors");
        let mut train_args = vec![
            "train".into(),
            "--config".into(),
            arg(&config),
            "--data".into(),
            arg(&data_root),
            "--out".into(),
            arg(&vit),
        ];
        if let Some(w) = self.vit_weights {
            train_args.extend(["--init".into(), arg(w)]);
        }
        if vit.join("last").exists() {
            train_args.push("--resume".into());
        }
        r.step(
            "train the ViT",
            &[config.clone(), train_dir.clone(), val_dir.clone()],
            &[vit.join("summary.json"), best.clone()],
            &train_args,
        )?;
        let metrics = vit.join("eval.json");
        r.step(
            "evaluate",
            std::slice::from_ref(&best),
            std::slice::from_ref(&metrics),
            &[
                "eval".into(),
                "--weights".into(),
                arg(&best),
                "--data".into(),
                arg(&val_dir),
                "--json".into(),
                arg(&metrics),
            ],
        )?;
        let preds = vit.join("predictions.csv");
        r.step(
            "predictions CSV",
            std::slice::from_ref(&best),
            std::slice::from_ref(&preds),
            &[
                "predict".into(),
                "--weights".into(),
                arg(&best),
                "--images".into(),
                arg(&val_dir),
                "--out".into(),
                arg(&preds),
            ],
        )?;
        let posembed = figures.join("posembed.png");
        std::fs::create_dir_all(&figures)?;
        r.step(
            "position-embedding similarity",
            std::slice::from_ref(&best),
            std::slice::from_ref(&posembed),
            &[
                "posembed".into(),
                "--weights".into(),
                arg(&best),
                "--out".into(),
                arg(&posembed),
                "--npy".into(),
                arg(&figures.join("posembed.npy")),
            ],
        )?;
        let curves = r.learning_curves("learning curves", &vit, &out.join("compare"))?;
        // Three validation images: the named ones on the real data.
        let shown: Vec<PathBuf> = if self.synthetic() {
            (0..3).map(|c| val_dir.join(format!("{c}_{c:05}.jpg"))).collect()
        } else {
            ["26_5064.jpg", "29_4718.jpg", "31_4838.jpg"]
                .iter()
                .map(|n| val_dir.join(n))
                .collect()
        };
        let att_dir = figures.join("attention");
        let att_pngs: Vec<PathBuf> = shown
            .iter()
            .map(|p| att_dir.join(format!("{}.png", stem(p))))
            .collect();
        let mut att_args = vec![
            "attention".into(),
            "--weights".into(),
            arg(&best),
            "--out".into(),
            arg(&att_dir),
            "--json".into(),
        ];
        if self.synthetic() {
            att_args.extend(["--class-names".into(), arg(&data_root.join("classes.txt"))]);
        }
        att_args.push("--images".into());
        att_args.extend(shown.iter().map(|p| arg(p)));
        r.step(
            "CLS attention figures",
            std::slice::from_ref(&best),
            &att_pngs,
            &att_args,
        )?;

        let eval: ClassificationMetrics = read_json(&metrics)?;
        summary.vit_val_accuracy = Some(eval.top1);
        let mut sections = vec![
            Section::new(
                "Classification",
                format!(
                    "validation top-1 {:.2} %, top-5 {:.2} % on {} images\npredictions: {}",
                    100.0 * eval.top1,
                    100.0 * eval.top5,
                    eval.images,
                    preds.strip_prefix(out).unwrap_or(&preds).display()
                ),
                vec![curves],
            ),
            Section::new(
                "Position embeddings",
                "Cosine similarity of every patch position embedding with every other (ViT paper, Fig. 7).",
                vec![posembed],
            ),
        ];
        let mut attention_text = "Last block, [class] query to every patch key, mean over heads.".to_string();
        if self.synthetic() {
            let (inside, area, n) = self.attention_check(r, &best, &val_dir, &shown[0])?;
            summary.attention_in_box_share = Some(inside);
            summary.box_area_share = Some(area);
            attention_text.push_str(&format!(
                "\nSanity check over {n} validation images: {:.1} % of the [class] attention falls inside the object's box, which covers {:.1} % of the image.",
                100.0 * inside,
                100.0 * area
            ));
        }
        sections.push(Section::new("Where the ViT looks", attention_text, att_pngs));
        Ok(sections)
    }

    /// The image folder root and the training config: the synthetic set (generated first)
    /// and its small ViT, or the course data and recipe.
    fn data_and_config(&self, r: &mut Runner) -> Result<(PathBuf, PathBuf)> {
        if let Some(d) = self.data {
            return Ok((d.join("p1_data"), self.root.join("configs/vit_s16_384_pets.toml")));
        }
        let data = self.out.join("data/synth");
        r.step(
            "synthetic classification set",
            &[],
            &[data.join("classes.txt")],
            &[
                "synth".into(),
                "--out".into(),
                arg(&data),
                "--size".into(),
                "64".into(),
                "--classes".into(),
                "6".into(),
            ],
        )?;
        Ok((data, self.root.join("configs/synth_vit_tiny.toml")))
    }

    /// On every synthetic validation image: how much of the [class] attention falls inside
    /// the object's box, and how much of the image the box covers (means, and the count).
    fn attention_check(
        &self,
        r: &mut Runner,
        best: &Path,
        val_dir: &Path,
        first: &Path,
    ) -> Result<(f64, f64, usize)> {
        let check_dir = self.out.join("check/attention");
        r.step(
            "attention on every validation image (sanity check)",
            &[best.to_path_buf()],
            &[check_dir.join(format!("{}.json", stem(first)))],
            &[
                "attention".into(),
                "--weights".into(),
                arg(best),
                "--out".into(),
                arg(&check_dir),
                "--json".into(),
                "--images".into(),
                arg(val_dir),
            ],
        )?;
        let boxes: BTreeMap<String, [f64; 4]> = read_json(&val_dir.join("boxes.json"))?;
        attention_in_boxes(&check_dir, &boxes, 64.0)
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The mean share of the attention inside each object's box and of the box's share of the
/// image, over the attention records in `json_dir` that `boxes` (keyed by image name) covers.
fn attention_in_boxes(
    json_dir: &Path,
    boxes: &BTreeMap<String, [f64; 4]>,
    image_size: f64,
) -> Result<(f64, f64, usize)> {
    let (mut inside, mut area, mut n) = (0.0, 0.0, 0usize);
    for entry in std::fs::read_dir(json_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(&bbox) = boxes.get(&format!("{}.jpg", stem(&path))) else {
            continue;
        };
        let record: AttentionRecord = read_json(&path)?;
        let grid = (record.grid[0], record.grid[1]);
        inside += attention_share_in_box(&record.cls_attention, grid, bbox, image_size);
        area += box_area_share(bbox, image_size);
        n += 1;
    }
    if n == 0 {
        bail!("{}: no attention JSON matched boxes.json", json_dir.display());
    }
    Ok((inside / n as f64, area / n as f64, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_share_over_records_known_answer() {
        let dir = std::env::temp_dir().join(format!("xtask-box-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 2x2 grid over a 64 px image; all attention in the top-left cell; the box is that cell.
        std::fs::write(
            dir.join("0_00000.json"),
            r#"{"grid":[2,2],"cls_attention":[0.6,0.0,0.0,0.0],"label":0,"name":null,"probability":1.0}"#,
        )
        .unwrap();
        let boxes = BTreeMap::from([("0_00000.jpg".to_string(), [0.0, 0.0, 32.0, 32.0])]);
        let (inside, area, n) = attention_in_boxes(&dir, &boxes, 64.0).unwrap();
        assert_eq!((inside, area, n), (1.0, 0.25, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
