//! `gaze synth`, `gaze train` and `gaze compare` end to end on a tiny synthetic set.

mod common;

use common::*;

const TINY: &str = TINY_VIT_CONFIG;

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

#[test]
fn a_kill_at_any_step_resumes_to_the_same_run() {
    let dir = scratch("train-kills");
    let data = dir.join("synth");
    let args = ["synth", "--out", data.to_str().unwrap(), "--classes", "3"];
    let out = gaze(&[&args[..], &["--train", "24", "--val", "12", "--size", "32"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let run = |out: &std::path::Path, extra: &[&str], fault: Option<usize>| {
        let mut args = vec!["train", "--config", config.to_str().unwrap()];
        args.extend(["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(extra);
        gaze_killed_at(&args, fault)
    };
    let whole = dir.join("whole");
    let out = run(&whole, &[], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = |run: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap()
    };
    let steps = kill_at_every_step(&dir.join("kills"), 3, run, |out| {
        assert_eq!(metrics_without_timing(out), metrics_without_timing(&whole));
        assert!(tensor_bytes(&out.join("best.safetensors")) == tensor_bytes(&whole.join("best.safetensors")));
        assert_eq!(summary(out)["best_epoch"], summary(&whole)["best_epoch"]);
        let left: Vec<String> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp") || name.ends_with(".old"))
            .collect();
        assert!(left.is_empty(), "{} leaves {left:?}", out.display());
    });
    assert!(steps >= 10, "only {steps} steps");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_run_folder_is_reused_only_to_resume_and_by_one_writer() {
    let dir = scratch("train-folder");
    let data = dir.join("synth");
    let args = ["synth", "--out", data.to_str().unwrap(), "--classes", "3"];
    let out = gaze(&[&args[..], &["--train", "12", "--val", "6", "--size", "32"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let run = dir.join("run");
    let out = train(&config, &data, &run, &["schedule.epochs=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let best = std::fs::read(run.join("best.safetensors")).unwrap();
    let metrics = std::fs::read(run.join("metrics.csv")).unwrap();

    // Without last/, neither a new run nor --resume may replace the finished one.
    std::fs::remove_dir_all(run.join("last")).unwrap();
    for extra in [&["optim.lr=5e-2"][..], &["--resume", "optim.lr=5e-2"]] {
        let out = train(&config, &data, &run, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(run.to_str().unwrap()), "{stderr}");
    }
    assert_eq!(std::fs::read(run.join("best.safetensors")).unwrap(), best);
    assert_eq!(std::fs::read(run.join("metrics.csv")).unwrap(), metrics);

    // A second writer is refused while the first holds the folder's lock.
    let busy = dir.join("busy");
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args([
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .args(["--out", busy.to_str().unwrap(), "schedule.epochs=200"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !busy.join("config.toml").exists() {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = train(&config, &data, &busy, &["--resume", "optim.lr=5e-2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another gaze run"), "{stderr}");
    // Killed, the first writer leaves no lock behind.
    first.kill().unwrap();
    first.wait().unwrap();
    let out = train(&config, &data, &busy, &["--resume", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config_toml = std::fs::read_to_string(busy.join("config.toml")).unwrap();
    assert!(config_toml.contains("epochs = 1"), "{config_toml}");

    // A run that fails before writing anything leaves no folder.
    let failed = dir.join("failed");
    let out = train(&config, &dir.join("no-such-data"), &failed, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!failed.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Under `gaze train ... > log.txt 2>&1` (no terminal), a progress line with step, loss, img/s
/// and ETA comes at the `--log-every` interval; `--quiet` leaves the log empty.
#[test]
fn a_log_without_terminal_gets_progress_lines_at_the_interval() {
    let dir = scratch("train-log");
    let data = dir.join("synth");
    let d = data.to_str().unwrap();
    let out = gaze(&[
        "synth",
        "--out",
        d,
        "--classes",
        "3",
        "--train",
        "400",
        "--val",
        "20",
        "--size",
        "32",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let log = dir.join("log.txt");
    let file = std::fs::File::create(&log).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_gaze"))
        .args(["train", "--config", config.to_str().unwrap(), "--data", d])
        .args(["--out", dir.join("run").to_str().unwrap(), "--log-every", "1s"])
        .args(["schedule.epochs=8", "data.batch_size=8"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains(" step ") && l.contains(" img/s eta "))
        .filter_map(|l| l.strip_prefix('[')?.split_once("s]")?.0.parse().ok())
        .collect();
    assert!(stamps.len() >= 2, "too short a run to see the interval: {text}");
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        // The stamps are printed to 0.1 s, so a gap of at least 1 s can read as 0.9.
        assert!(
            (0.9..1.5).contains(&gap),
            "progress lines {gap:.2} s apart, not about 1 s: {text}"
        );
    }
    let quiet = gaze(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--data",
        d,
        "--out",
        dir.join("quiet").to_str().unwrap(),
        "--quiet",
        "schedule.epochs=1",
    ]);
    assert!(quiet.status.success());
    assert_eq!(
        (quiet.stdout.len(), quiet.stderr.len()),
        (0, 0),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
