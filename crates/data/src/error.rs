use std::path::{Path, PathBuf};

/// Everything that can go wrong between a path and a tensor. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system's error is part of the message, not a separate source, so
    /// that a chain of errors prints it once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a readable image ({reason}); re-export it as JPEG or PNG or remove it")]
    Decode { path: PathBuf, reason: String },
    #[error(
        "{path}: {width}x{height} pixels is over the limit of {limit} pixels; downscale the image, or raise the limit with --max-pixels"
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error(
        "{path}: file name does not match `{{label}}_{{id}}.jpg` ({reason}); rename it, e.g. `12_345.jpg`"
    )]
    BadName { path: PathBuf, reason: String },
    #[error("{path}: no .jpg, .jpeg or .png images found; point at a folder of images")]
    NoImages { path: PathBuf },
    /// Images that could not be read, each named with its reason ([`crate::dataset::unreadable`]).
    #[error("{message}")]
    Unreadable { message: String },
    /// A setting that cannot be used for `path`.
    #[error("{path}: {reason}")]
    Setting { path: PathBuf, reason: String },
    #[error("{path}: no such file or folder")]
    NotFound { path: PathBuf },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            DataError::Io {
                path: path.to_path_buf(),
                error: source,
            }
        }
    }
}
