//! The burn building blocks that gaze's models share.
//!
//! * [`device`]: the backends compiled into this build (cargo features `flex`, `ndarray`,
//!   `tch`, `cuda`, `wgpu`), parsing a device name, and seeded random draws that other
//!   threads cannot disturb.
//! * [`ops`]: the operations a transformer spends its time in (GELU, attention, the linear
//!   layer, layer norm, patch embedding, convolution with a frozen batch norm, the optimiser's
//!   `a x + b y`). Each is a function that takes burn modules and tensors, runs a fast CPU
//!   kernel with its own backward pass where it applies, and burn's own operations
//!   elsewhere.
//! * [`decode`]: kernels that feed one row at a time through small layers on plain slices,
//!   for greedy decoding.
//! * [`peak`]: the machine's measured fp32 FMA throughput, the bench's reference.
//! * [`test_support`]: the fixtures folder and the `wgpu` device of the integration tests.
//! * [`checkpoint`]: what a `.safetensors` or PyTorch file holds, read without its data, the
//!   comparison with what a model expects, and saving a module as `.safetensors` in
//!   PyTorch's layout.

pub mod checkpoint;
pub mod decode;
pub mod device;
pub mod ops;
pub mod peak;
pub mod test_support;

#[cfg(feature = "flex")]
mod bf16_panels;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod gemm;
#[cfg(feature = "flex")]
mod panels;
// The flex kernels' element-wise loops; without flex only the caption decoder uses a few.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod simd;
#[cfg(all(test, feature = "flex"))]
mod testing;

pub use decode::argmax;
pub use device::{Adapter, DeviceError, available_devices, parse_device, wgpu_adapters};
