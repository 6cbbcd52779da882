//! `f64` fields that read back from JSON bit for bit, for the resumable checkpoint: serde_json's
//! own float parser (without its `float_roundtrip` feature, which would rebuild much of the
//! dependency tree) can land one unit in the last place away, and a resumed run must compare
//! accuracies and sum losses exactly as an uninterrupted one. Each value is written as Rust's
//! shortest round-trip decimal in a string and read back with Rust's exact parser.
//!
//! Use with `#[serde(with = "crate::exact")]`, or `crate::exact::option` for `Option<f64>`.

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    parse(&String::deserialize(deserializer)?)
}

/// `text` as the `f64` it spells exactly.
fn parse<E: Error>(text: &str) -> Result<f64, E> {
    text.parse()
        .map_err(|_| E::custom(format!("`{text}` is not a number")))
}

pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => super::serialize(v, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| parse(&text))
            .transpose()
    }
}
