//! What the tests of several crates share: their fixtures folder and the `wgpu` device they
//! run the backend's parity tests on.

use std::path::PathBuf;

/// `tests/fixtures` of the crate at `manifest_dir` (pass `env!("CARGO_MANIFEST_DIR")`), or of
/// the `CARGO_MANIFEST_DIR` set at run time, which moves it for a test executable run on
/// another machine (tools/gpu-check.sh).
pub fn fixtures(manifest_dir: &str) -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(manifest_dir.into());
    PathBuf::from(crate_dir).join("tests/fixtures")
}

/// The `wgpu` device for the backend's tests, after printing the adapter it runs on; `None`
/// (with the reason printed) where the machine has no adapter. Under `CI=true` a missing
/// adapter panics instead, so a CI machine without a Vulkan driver fails rather than skips.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<burn::tensor::Device> {
    let adapters = crate::wgpu_adapters();
    match adapters.first() {
        Some(a) => {
            let kind = if a.software { "software" } else { "GPU" };
            // Past the test harness's capture, so that every run's log names the adapter.
            let line = format!("wgpu adapter: {} ({}, {kind})\n", a.name, a.api);
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            Some(burn::tensor::Device::wgpu(
                burn::tensor::DeviceKind::DefaultDevice,
            ))
        }
        None => {
            let why = "no wgpu adapter on this machine (for a software one: \
                       apt-get install mesa-vulkan-drivers)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{why}; CI=true requires the wgpu tests to run");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}
