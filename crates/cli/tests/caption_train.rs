//! `gaze synth --captions`, `gaze caption-train` (teacher forcing, resumable) and
//! `gaze caption` on the model it wrote.

mod common;

use std::path::Path;

use common::{
    gaze, gaze_killed_at, kill_at_every_step, metrics_without_timing as metrics, scratch,
    tensor_bytes as tensors,
};

const CONFIG: &str = r#"
[model]
resnet_blocks = [1, 1, 1, 1]
resnet_width = 4
hidden_dim = 16
nheads = 2
enc_layers = 1
dec_layers = 1
dim_feedforward = 32
vocab_size = 115
max_position_embeddings = 16
max_dim = 96

[data]
dir = "unset"
batch_size = 8

[optim]
name = "adamw"
lr = 3e-3

[schedule]
epochs = 2
warmup_steps = 2
"#;

fn caption_train(config: &Path, out: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    caption_train_killed_at(config, out, data, extra, None)
}

fn caption_train_killed_at(
    config: &Path,
    out: &Path,
    data: &Path,
    extra: &[&str],
    fault: Option<usize>,
) -> std::process::Output {
    let dir = format!("data.dir=\"{}\"", data.display());
    let mut args = vec![
        "caption-train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        &dir,
    ];
    args.extend(extra);
    gaze_killed_at(&args, fault)
}

#[test]
fn trains_resumes_bit_for_bit_and_captions_with_what_it_wrote() {
    let dir = scratch("caption-train");
    let data = dir.join("scenes");
    let out = gaze(&[
        "synth",
        "--captions",
        "--out",
        data.to_str().unwrap(),
        "--train",
        "40",
        "--val",
        "4",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("tiny.toml");
    std::fs::write(&config, CONFIG).unwrap();

    let whole = dir.join("whole");
    let out = caption_train(&config, &whole, &data, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 10, "{summary}");
    assert_eq!(summary["val"]["images"], 4, "{summary}");
    let exact = summary["val"]["exact_match"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&exact));
    assert_eq!(metrics(&whole).len(), 3);

    // Killed mid-epoch (after 3 of 5 steps), resumed and killed again in the second epoch,
    // then resumed to the end: the same model and metrics as the uninterrupted run.
    let parts = dir.join("parts");
    for extra in [
        &["--max-steps", "3"][..],
        &["--resume", "--max-steps", "4"],
        &["--resume"],
    ] {
        let out = caption_train(&config, &parts, &data, extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(metrics(&parts), metrics(&whole));
    assert!(tensors(&parts.join("model.safetensors")) == tensors(&whole.join("model.safetensors")));

    // Killed before every rename and removal, and again during the resumed run's clean-up:
    // resuming gives the uninterrupted run's model and metrics.
    let kills = dir.join("kills");
    let steps = kill_at_every_step(
        &kills,
        3,
        |out, extra, fault| caption_train_killed_at(&config, out, &data, extra, fault),
        |out| {
            assert_eq!(metrics(out), metrics(&whole), "{}", out.display());
            assert!(
                tensors(&out.join("model.safetensors")) == tensors(&whole.join("model.safetensors")),
                "{}",
                out.display()
            );
        },
    );
    assert!(steps >= 10, "only {steps} steps");

    // A used run folder needs --resume.
    let out = caption_train(&config, &whole, &data, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // The vocabulary must fit the model, and the error says how.
    let out = caption_train(&config, &dir.join("bad"), &data, &["model.vocab_size=200"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("vocab.txt") && err.contains("model.vocab_size"),
        "{err}"
    );

    // gaze caption reads the architecture from the file: a 4x6 grid on a 96x64 scene.
    let figures = dir.join("figures");
    let out = gaze(&[
        "caption",
        "--weights",
        whole.join("model.safetensors").to_str().unwrap(),
        "--vocab",
        data.join("vocab.txt").to_str().unwrap(),
        "--images",
        data.join("val/00001.png").to_str().unwrap(),
        "--out",
        figures.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let caption: serde_json::Value =
        serde_json::from_slice(&std::fs::read(figures.join("00001.json")).unwrap()).unwrap();
    assert_eq!(caption["feat_grid"], serde_json::json!([4, 6]));
    let steps = caption["token_ids"].as_array().unwrap().len();
    assert_eq!(caption["attention"].as_array().unwrap().len(), steps);
    assert!(figures.join("00001.png").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
