//! Picking among the backends compiled into this build (cargo features `flex`, `ndarray`,
//! `tch`, `cuda`, `wgpu`), and seeding their random draws.

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
/// `auto`: the first of [`available_devices`], passing over `wgpu` when its only adapters are
/// software ones (Mesa's lavapipe runs Vulkan on the CPU, far slower than `flex`) unless it is
/// the only backend.
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
        "auto" => {
            let names = available_devices();
            let gpu = || wgpu_adapters().iter().any(|a| !a.software);
            let first = names.iter().find(|n| **n != "wgpu" || gpu()).or(names.first());
            first.map_or_else(|| Err(err()), |n| parse_device(n))
        }
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

/// Gives the Vulkan stack a runtime folder where the environment names none, so that making a
/// Vulkan instance does not print `error: XDG_RUNTIME_DIR is invalid or not set in the
/// environment` (libwayland's, reached through the driver's presentation support, which gaze
/// never uses; it connects to nothing there).
///
/// # Safety
/// It sets an environment variable: call it before any other thread starts.
pub unsafe fn quiet_vulkan_loader() {
    if cfg!(feature = "wgpu") && std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
}

/// A graphics adapter the `wgpu` backend can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adapter {
    /// The driver's name for it, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The graphics API it was found through, e.g. `Vulkan`.
    pub api: String,
    /// A CPU implementation (lavapipe, SwiftShader), not a GPU.
    pub software: bool,
}

/// The adapters `wgpu` finds on this machine, GPUs first; none in a build without `wgpu`.
pub fn wgpu_adapters() -> Vec<Adapter> {
    #[cfg(feature = "wgpu")]
    {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters: Vec<Adapter> = block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
            .iter()
            .map(|a| {
                let info = a.get_info();
                Adapter {
                    name: info.name,
                    api: format!("{:?}", info.backend),
                    software: info.device_type == wgpu::DeviceType::Cpu,
                }
            })
            .collect();
        adapters.sort_by_key(|a| a.software);
        adapters
    }
    #[cfg(not(feature = "wgpu"))]
    Vec::new()
}

/// Polls `future` to completion on this thread: adapter enumeration on native APIs is ready at
/// once, so no executor is needed.
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut context) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// Seeds `device`'s random generator and keeps the other threads of this process that draw
/// through this function waiting until the returned guard drops. burn keeps one generator
/// per process, so two threads that each seed and then draw (two trainings, or tests running
/// in parallel) would otherwise take each other's numbers and lose their reproducibility.
/// A thread that holds the guard and calls this again waits for itself forever.
pub fn seeded(device: &Device, seed: u64) -> std::sync::MutexGuard<'static, ()> {
    static DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = DRAWS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_names_a_compiled_backend() {
        // The test build has flex (and wgpu, whose lavapipe adapter `auto` passes over).
        let auto = parse_device("auto").unwrap();
        let flex = parse_device("flex").unwrap();
        let gpu = wgpu_adapters().iter().any(|a| !a.software);
        assert_eq!(
            auto == flex,
            !gpu && !cfg!(any(feature = "cuda", feature = "tch"))
        );
    }

    #[test]
    fn unknown_names_list_what_is_available() {
        let err = parse_device("metal").unwrap_err().to_string();
        assert!(err.contains("`metal`") && err.contains("flex"), "{err}");
        assert!(parse_device("cuda:x").is_err());
    }

    #[cfg(feature = "flex")]
    #[test]
    fn threads_that_seed_alike_draw_alike() {
        use burn::tensor::{Distribution, Tensor};
        let device = Device::flex();
        let start = std::sync::Barrier::new(4);
        let draw = |start: Option<&std::sync::Barrier>| {
            start.map(|s| s.wait());
            let _draws = seeded(&device, 5);
            // Many small draws with a yield before each, where another thread could come between.
            (0..500)
                .flat_map(|_| {
                    std::thread::yield_now();
                    Tensor::<1>::random([4], Distribution::Default, &device)
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap()
                })
                .collect::<Vec<f32>>()
        };
        let alone = draw(None);
        let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4).map(|_| scope.spawn(|| draw(Some(&start)))).collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for drawn in together {
            assert!(drawn == alone, "a thread's draws were interleaved with another's");
        }
    }
}
