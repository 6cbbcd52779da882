//! The caption half: CATR's captions with one attention panel per word, on the course's
//! images with the published checkpoint, or on synthetic scenes with a small model trained
//! here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use gaze_records::{CaptionRecord, CaptionSummary, SceneRecord};

use super::Summary;
use super::report::Section;
use super::runner::{Runner, arg, read_json, up_to_date};

/// Captions every image of `images` with the published CATR checkpoint.
pub fn published(r: &mut Runner, out: &Path, images: &Path, weights: &Path, vocab: &Path) -> Result<Section> {
    let cap_dir = out.join("figures/captions");
    let marker = cap_dir.join(".done");
    let inputs = [weights.to_path_buf(), vocab.to_path_buf()];
    // One PNG per image whose names are only known after listing: a marker stands for them.
    if up_to_date(std::slice::from_ref(&marker), &inputs) {
        r.skip("caption attention");
    } else {
        r.step(
            "caption attention",
            &inputs,
            &[],
            &[
                "caption".into(),
                "--weights".into(),
                arg(weights),
                "--vocab".into(),
                arg(vocab),
                "--images".into(),
                arg(images),
                "--out".into(),
                arg(&cap_dir),
                "--json".into(),
            ],
        )?;
        gaze_data::write_atomic(&marker, b"")?;
    }
    let pngs: Vec<PathBuf> = std::fs::read_dir(&cap_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    Ok(Section::new(
        "Caption attention",
        "CATR v3, greedy decoding; one panel per word.",
        pngs,
    ))
}

/// Generates synthetic scenes, trains a small CATR on them with teacher forcing, captions
/// five held-out scenes with their attention figures, and reports exact match and pointing
/// accuracy over every held-out scene.
pub fn synthetic(root: &Path, out: &Path, r: &mut Runner, summary: &mut Summary) -> Result<Section> {
    let scenes = out.join("data/scenes");
    let vocab = scenes.join("vocab.txt");
    let val_dir = scenes.join("val");
    r.step(
        "synthetic caption set",
        &[],
        &[vocab.clone(), val_dir.join("captions.json")],
        &["synth".into(), "--captions".into(), "--out".into(), arg(&scenes)],
    )?;
    let config = root.join("configs/caption/synth_catr.toml");
    let run = out.join("catr");
    let (weights, run_summary) = (run.join("model.safetensors"), run.join("summary.json"));
    let mut train_args = vec![
        "caption-train".into(),
        "--config".into(),
        arg(&config),
        "--out".into(),
        arg(&run),
        format!("data.dir=\"{}\"", scenes.display()),
    ];
    if run.join("last").exists() {
        train_args.push("--resume".into());
    }
    r.step(
        "train the captioner",
        &[config, vocab.clone(), val_dir.join("captions.json")],
        &[run_summary.clone(), weights.clone()],
        &train_args,
    )?;
    let curves = r.learning_curves("captioner learning curves", &run, &out.join("compare-caption"))?;
    let shown: Vec<String> = (0..5).map(|i| format!("{i:05}")).collect();
    let cap_dir = out.join("figures/captions");
    let pngs: Vec<PathBuf> = shown.iter().map(|s| cap_dir.join(format!("{s}.png"))).collect();
    let mut caption_args = vec![
        "caption".into(),
        "--weights".into(),
        arg(&weights),
        "--vocab".into(),
        arg(&vocab),
        "--out".into(),
        arg(&cap_dir),
        "--json".into(),
        "--images".into(),
    ];
    caption_args.extend(shown.iter().map(|s| arg(&val_dir.join(format!("{s}.png")))));
    r.step(
        "caption attention (5 held-out scenes)",
        std::slice::from_ref(&weights),
        &pngs,
        &caption_args,
    )?;

    let trained: CaptionSummary = read_json(&run_summary)?;
    let scores = &trained.val;
    summary.caption_exact_match = Some(scores.exact_match);
    summary.pointing_accuracy = Some(scores.pointing_accuracy);
    summary.pointing_chance = Some(scores.pointing_chance);
    let references: BTreeMap<String, SceneRecord> = read_json(&val_dir.join("captions.json"))?;
    let mut lines = Vec::new();
    for s in &shown {
        let name = format!("{s}.png");
        let got: CaptionRecord = read_json(&cap_dir.join(format!("{s}.json")))?;
        let want = references.get(&name).map_or("", |r| r.caption.as_str());
        let mark = if got.caption.eq_ignore_ascii_case(want) {
            "ok"
        } else {
            "WRONG"
        };
        lines.push(format!(
            "{name}: \"{}\" (reference \"{want}\", {mark})",
            got.caption
        ));
    }
    Ok(Section::new(
        "Caption attention",
        format!(
            "A small CATR-architecture model (configs/caption/synth_catr.toml) trained from scratch on {} synthetic scenes with teacher forcing; greedy decoding, one panel per word (last decoder layer's cross-attention, mean over heads). The curve is the teacher-forced validation token accuracy per epoch.\n\
             Held-out scenes captioned exactly: {:.1} % of {}.\n\
             Pointing check: for {} colour and shape words of exactly captioned scenes, the attention peak lies inside the named object's box {:.1} % of the time (a random cell would: {:.1} %).\n\n{}",
            trained.train_images,
            100.0 * scores.exact_match,
            scores.images,
            scores.pointed_words,
            100.0 * scores.pointing_accuracy,
            100.0 * scores.pointing_chance,
            lines.join("\n")
        ),
        [vec![curves], pngs].concat(),
    ))
}
