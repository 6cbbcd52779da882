//! Figures of where transformers look: position-embedding similarity grids, attention
//! overlays, panel grids with titles and colorbars.
//!
//! Not implemented yet: see the figures issue. The crate exists so that the workspace
//! layout is fixed from the start.
