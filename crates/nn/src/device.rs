//! Picking among the backends compiled into this build (cargo features `flex`, `ndarray`,
//! `tch`, `cuda`, `wgpu`).

use burn::tensor::Device;

/// A device name that this build cannot provide.
#[derive(Debug, thiserror::Error)]
#[error("device `{name}` is not available in this build; available: {}. Rebuild with the matching cargo feature (e.g. `--features tch`)", available_devices().join(", "))]
pub struct DeviceError {
    pub name: String,
}

/// Device names this build accepts, preferred first.
pub fn available_devices() -> Vec<&'static str> {
    let mut names = Vec::new();
    if cfg!(feature = "cuda") {
        names.push("cuda");
    }
    if cfg!(feature = "tch") {
        names.extend(["tch", "tch-cuda"]);
    }
    if cfg!(feature = "wgpu") {
        names.push("wgpu");
    }
    if cfg!(feature = "flex") {
        names.push("flex");
    }
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    names
}

/// Parses `flex`, `ndarray`, `tch` (libtorch CPU), `tch-cuda[:N]`, `cuda[:N]`, `wgpu`, or
/// `auto` (the first of [`available_devices`]).
// burn 0.22 marks its libtorch backend deprecated; gaze keeps it as a build-time choice.
#[cfg_attr(feature = "tch", allow(deprecated))]
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let err = || DeviceError {
        name: name.to_string(),
    };
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => (k, i.parse::<usize>().map_err(|_| err())?),
        None => (name, 0),
    };
    let _ = index;
    match kind {
        "auto" => available_devices()
            .first()
            .map(|n| parse_device(n))
            .unwrap_or_else(|| Err(err())),
        #[cfg(feature = "flex")]
        "flex" => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        "ndarray" => Ok(Device::ndarray()),
        #[cfg(feature = "tch")]
        "tch" => Ok(Device::libtorch()),
        #[cfg(feature = "tch")]
        "tch-cuda" => Ok(Device::libtorch_cuda(index)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(index)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        _ => Err(err()),
    }
}
