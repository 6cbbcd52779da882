//! CATR image captioning (a ResNet backbone with a transformer encoder/decoder, "CATR:
//! Caption Transformer", Saahil Uppal) on burn, with one cross-attention map per generated
//! word.
//!
//! Not implemented yet: see the caption-attention issue. The crate exists so that the
//! workspace layout is fixed from the start.
