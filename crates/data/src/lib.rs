//! Images in, tensors out: the data side of gaze.
//!
//! * [`decode`] reads a file into 8-bit RGB the way `PIL.Image.open(f).convert('RGB')` does.
//! * [`resize`] is Pillow's bicubic resampling, bit for bit (fixed point, two passes), and the
//!   same antialiased filter in floating point for resampling feature grids.
//! * [`transform`] is timm's evaluation transform (resize shorter side, center crop, normalise);
//!   [`augment`] its training counterpart.
//! * [`synth`] writes a synthetic classification set in the same layout; [`scenes`] a
//!   synthetic captioning set.
//! * [`dataset`] lists images and parses the course's `{label}_{id}.jpg` file names;
//!   [`layout`] reads the three dataset layouts (course, ImageFolder, Oxford-IIIT Pet) and
//!   [`convert`] writes the course layout from the official Pet files.
//! * [`boxes`] measures attention against the synthetic sets' object boxes.
//! * [`io`] writes output files atomically, never over an input.

pub mod augment;
pub mod boxes;
pub mod convert;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod io;
pub mod layout;
pub mod resize;
pub mod rng;
pub mod scenes;
pub mod synth;
pub mod transform;

pub use dataset::{
    LabeledImage, collect_images, display_name, ensure_readable, figure_stems, find_unreadable,
    labeled_images, parse_label, unreadable,
};
pub use decode::load_rgb;
pub use error::DataError;
/// The `image` crate, re-exported so users of gaze share its `RgbImage`.
pub use image;
pub use io::{
    protect_inputs, read_npy, refuse_inputs, remove_stale_temps, replace_dir, replaced_dir, settle_dir,
    write_atomic, write_atomic_with, write_npy,
};
pub use layout::{LabeledSet, Layout, PET_SPLITS, detect_layout, read_labeled_set};
/// The `ndarray` crate, re-exported so that readers of gaze's `.npy` files share its arrays.
pub use ndarray;
pub use transform::{EvalTransform, Interpolation};
