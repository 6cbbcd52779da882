//! `gaze synth`, `gaze train` and `gaze compare` end to end on a tiny synthetic set.

mod common;

use common::*;

const TINY: &str = r#"
[model]
preset = "vit_tiny_patch16_224"
num_classes = 3
init = "scratch"
img_size = 32
patch_size = 8
embed_dim = 48
depth = 2
num_heads = 3
[data]
train = "unused/train"
val = "unused/val"
batch_size = 16
[optim]
name = "adamw"
lr = 3e-3
[schedule]
epochs = 2
warmup_steps = 2
"#;

/// `gaze train --config CONFIG --data DATA --out OUT EXTRA...`.
fn train(
    config: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend(["--out", out.to_str().unwrap()]);
    args.extend(extra);
    gaze(&args)
}

#[test]
fn synth_train_compare_and_bad_images() {
    let dir = scratch("train");
    let data = dir.join("synth");
    let out = gaze(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--classes",
        "3",
        "--train",
        "48",
        "--val",
        "24",
        "--size",
        "32",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let runs = [dir.join("runs/lr3e-3"), dir.join("runs/lr1e-2")];
    for (run, lr) in runs.iter().zip(["3e-3", "1e-2"]) {
        let lr = format!("optim.lr={lr}");
        let out = train(&config, &data, run, &[&lr]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("epoch 2 step 6"), "{stdout}");
        for file in [
            "config.toml",
            "metrics.csv",
            "summary.json",
            "best.safetensors",
            "last/state.json",
        ] {
            assert!(run.join(file).exists(), "{file}");
        }
    }
    // Training again into a used folder without --resume is refused.
    let out = train(&config, &data, &runs[0], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    let cmp = dir.join("compare");
    let out = gaze(&[
        "compare",
        runs[0].to_str().unwrap(),
        runs[1].to_str().unwrap(),
        "--out",
        cmp.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0], "| run | optim.lr | best val acc | epoch | time (s) |",
        "{table}"
    );
    assert!(
        lines[2].starts_with("| lr3e-3 | 0.003 | ") && lines[3].starts_with("| lr1e-2 | 0.01 | "),
        "{table}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs[0].join("summary.json")).unwrap()).unwrap();
    let best = summary["best_val_accuracy"].as_f64().unwrap();
    assert!(
        lines[2].contains(&format!("| {:.2} % |", 100.0 * best)),
        "{table}"
    );
    assert!(gaze_data::image::open(cmp.join("val_curves.png")).is_ok());

    // A corrupt image stops the run at the start-up scan, naming it; --skip-bad counts it.
    std::fs::write(data.join("train/1_99999.jpg"), b"not a jpeg").unwrap();
    let bad_run = dir.join("runs/bad");
    let out = train(&config, &data, &bad_run, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("1_99999.jpg") && stderr.contains("--skip-bad"),
        "{stderr}"
    );
    let out = train(&config, &data, &bad_run, &["--skip-bad", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bad_run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_images"], 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
