//! Project automation behind `cargo xtask <command>`, as a library so that tests can run a
//! reproduction with the `gaze` binary cargo already built.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, Result, bail};

pub mod bench;
pub mod fetch;
pub mod reproduce;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `cmd` in the workspace root; an error unless it succeeds.
pub fn run(mut cmd: Process) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// The cargo features gaze is built with for `backend` (a feature name: flex, ndarray, tch,
/// cuda, wgpu). flex and wgpu get both, the set of the workspace's test build, so the test
/// build's artifacts serve them and one binary of each profile serves both.
pub fn backend_features(backend: &str) -> &str {
    match backend {
        "flex" | "wgpu" => "flex,wgpu",
        other => other,
    }
}

/// Environment for building and running the `tch` backend against the libtorch inside
/// `python`'s torch (burn-tch 0.22 wants torch 2.9.0): `LIBTORCH_USE_PYTORCH`, that Python
/// first on `PATH` (torch-sys asks `python` where torch is), and torch's libraries on
/// `LD_LIBRARY_PATH` (the binary has no RPATH).
pub fn libtorch_env(python: &Path) -> Result<Vec<(String, String)>> {
    let out = Process::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)",
        ])
        .output()
        .with_context(|| format!("could not run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "{} has no torch; the tch backend needs a Python with torch 2.9.0 (pass --python or set GAZE_PYTHON)",
            python.display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (torch_dir, version) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    if !version.starts_with("2.9.") {
        bail!(
            "{}: torch {version}, but burn-tch 0.22 builds against torch 2.9.0",
            python.display()
        );
    }
    let prepend = |var: &str, dir: String| match std::env::var(var) {
        Ok(old) if !old.is_empty() => format!("{dir}:{old}"),
        _ => dir,
    };
    let python_dir = std::fs::canonicalize(python)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    // A venv's bin/python may resolve to the system interpreter: keep the venv's bin first.
    let venv_bin = python.parent().map(Path::to_path_buf).unwrap_or(python_dir);
    Ok(vec![
        ("LIBTORCH_USE_PYTORCH".into(), "1".into()),
        ("PATH".into(), prepend("PATH", venv_bin.display().to_string())),
        (
            "LD_LIBRARY_PATH".into(),
            prepend("LD_LIBRARY_PATH", format!("{torch_dir}/lib")),
        ),
    ])
}
