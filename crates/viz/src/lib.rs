//! Figures of where transformers look, as PNG-ready RGB images.
//!
//! * [`analysis`]: the numbers behind the figures, on plain `f32` slices — cosine similarity
//!   of position embeddings (ViT paper, Fig. 7), [class]-token attention with head fusion,
//!   and attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers",
//!   2020).
//! * [`figures`]: the finished figures — a grid of similarity maps with a shared colorbar,
//!   and attention laid over the image.
//! * [`canvas`], [`colorbar`], [`colormap`], [`text`]: the small drawing toolkit they are made
//!   with.

pub mod analysis;
pub mod canvas;
pub mod colorbar;
pub mod colormap;
pub mod figures;
pub mod text;

pub use colormap::Colormap;

/// Saves `image` as PNG atomically (temporary file, then rename).
pub fn save_png(image: &image::RgbImage, path: &std::path::Path) -> std::io::Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    gaze_data::write_atomic(path, bytes.get_ref())
}
