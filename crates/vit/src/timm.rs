//! timm's names for models, and the `config.json` a Hub checkpoint carries.
//!
//! `--model` takes an architecture (`vit_small_patch16_384`, its default pretrained tag) or a
//! full `name.tag` (`vit_small_patch16_384.augreg_in21k_ft_in1k`), looked up in a table that
//! `tools/gen_timm_models.py` generates from timm. A `config.json` (as timm's `save_for_hf`
//! and the Hub write it) gives the architecture, `model_args`, the class count, `label_names`
//! and the `pretrained_cfg` preprocessing.

#[path = "timm_models.rs"]
mod table;

use std::path::Path;

use serde::Deserialize;

use crate::VitConfig;

/// One pretrained ViT that timm defines: its architecture and data config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimmModel {
    /// `architecture.tag`.
    pub name: &'static str,
    /// Whether timm picks this tag for the bare architecture name.
    pub default_tag: bool,
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    /// 0 for weights without a classifier (MAE, DINO, timm's `orig_in21k`).
    pub num_classes: usize,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub interpolation: &'static str,
    pub crop_pct: f64,
    pub crop_mode: &'static str,
    /// Why gaze's ViT cannot hold the model, if it cannot.
    pub unsupported: Option<&'static str>,
}

impl TimmModel {
    pub fn architecture(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(a, _)| a)
    }
}

/// Every name.tag gaze knows, in timm's spelling.
pub fn timm_models() -> &'static [TimmModel] {
    table::TIMM_MODELS
}

fn known_names() -> String {
    let mut architectures: Vec<&str> = timm_models().iter().map(TimmModel::architecture).collect();
    architectures.dedup();
    let tagged: Vec<&str> = timm_models().iter().map(|m| m.name).collect();
    format!(
        "architectures {}; with tags {}",
        architectures.join(", "),
        tagged.join(", ")
    )
}

/// The model timm means by `name`: a `name.tag`, or an architecture (its default tag).
pub fn find_timm_model(name: &str) -> Result<&'static TimmModel, String> {
    let found = match name.split_once('.') {
        Some(_) => timm_models().iter().find(|m| m.name == name),
        None => timm_models()
            .iter()
            .find(|m| m.default_tag && m.architecture() == name),
    };
    found.ok_or_else(|| format!("unknown model `{name}`; known: {}", known_names()))
}

/// Refuses preprocessing gaze does not implement, rather than approximating it.
fn check_preprocessing(interpolation: &str, crop_mode: &str) -> Result<(), String> {
    if interpolation != "bicubic" {
        return Err(format!(
            "interpolation `{interpolation}` is not implemented (gaze resizes with Pillow's bicubic only)"
        ));
    }
    if crop_mode != "center" {
        return Err(format!(
            "crop_mode `{crop_mode}` is not implemented (gaze crops at the center only)"
        ));
    }
    Ok(())
}

fn f32s(v: [f64; 3]) -> [f32; 3] {
    v.map(|x| x as f32)
}

impl TimmModel {
    /// The architecture and preprocessing as a [`VitConfig`]; `num_classes` is the tag's
    /// (0 for a headless checkpoint: give the count before building a model).
    pub fn config(&self) -> Result<VitConfig, String> {
        if let Some(why) = self.unsupported {
            return Err(format!("{} is not a ViT gaze can build: {why}", self.name));
        }
        check_preprocessing(self.interpolation, self.crop_mode).map_err(|e| format!("{}: {e}", self.name))?;
        Ok(VitConfig::new()
            .with_img_size([self.img_size; 2])
            .with_patch_size(self.patch_size)
            .with_embed_dim(self.embed_dim)
            .with_depth(self.depth)
            .with_num_heads(self.num_heads)
            .with_mlp_ratio(self.mlp_ratio)
            .with_num_classes(self.num_classes)
            .with_mean(f32s(self.mean))
            .with_std(f32s(self.std))
            .with_crop_pct(self.crop_pct))
    }
}

/// The parts of timm's `config.json` gaze reads. Other keys (`num_features`, `global_pool`,
/// the rest of `pretrained_cfg`) are allowed and ignored.
#[derive(Debug, Deserialize)]
struct HubConfig {
    architecture: String,
    num_classes: Option<usize>,
    #[serde(default)]
    label_names: Option<LabelNames>,
    #[serde(default)]
    model_args: ModelArgs,
    #[serde(default)]
    pretrained_cfg: PretrainedCfg,
}

/// timm allows a list, or a map from class index to name.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum LabelNames {
    List(Vec<String>),
    Map(std::collections::BTreeMap<String, String>),
}

#[derive(Debug, Default, Deserialize)]
struct ModelArgs {
    img_size: Option<usize>,
    patch_size: Option<usize>,
    embed_dim: Option<usize>,
    depth: Option<usize>,
    num_heads: Option<usize>,
    mlp_ratio: Option<f64>,
    qkv_bias: Option<bool>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
struct PretrainedCfg {
    input_size: Option<[usize; 3]>,
    interpolation: Option<String>,
    crop_pct: Option<f64>,
    crop_mode: Option<String>,
    mean: Option<[f64; 3]>,
    std: Option<[f64; 3]>,
}

/// The model a timm `config.json` describes. Architecture arguments gaze's ViT does not
/// have (`class_token`, `global_pool`, ...) are refused by name.
pub fn read_hub_config(path: &Path) -> Result<VitConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_hub_config(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_hub_config(text: &str) -> Result<VitConfig, String> {
    let hub: HubConfig = serde_json::from_str(text).map_err(|e| format!("not a timm config.json: {e}"))?;
    let base = find_timm_model(&hub.architecture)?;
    if let Some(why) = base.unsupported {
        return Err(format!("{} is not a ViT gaze can build: {why}", hub.architecture));
    }
    let args = &hub.model_args;
    if let Some(key) = args.other.keys().next() {
        return Err(format!("model_args.{key} is not supported by gaze's ViT"));
    }
    if args.qkv_bias == Some(false) {
        return Err("model_args.qkv_bias = false is not supported by gaze's ViT".into());
    }
    let cfg = &hub.pretrained_cfg;
    check_preprocessing(
        cfg.interpolation.as_deref().unwrap_or(base.interpolation),
        cfg.crop_mode.as_deref().unwrap_or(base.crop_mode),
    )?;
    let img_size = args
        .img_size
        .or(cfg.input_size.map(|s| s[1]))
        .unwrap_or(base.img_size);
    let mut config = VitConfig::new()
        .with_img_size([img_size; 2])
        .with_patch_size(args.patch_size.unwrap_or(base.patch_size))
        .with_embed_dim(args.embed_dim.unwrap_or(base.embed_dim))
        .with_depth(args.depth.unwrap_or(base.depth))
        .with_num_heads(args.num_heads.unwrap_or(base.num_heads))
        .with_mlp_ratio(args.mlp_ratio.unwrap_or(base.mlp_ratio))
        .with_num_classes(hub.num_classes.unwrap_or(base.num_classes))
        .with_mean(f32s(cfg.mean.unwrap_or(base.mean)))
        .with_std(f32s(cfg.std.unwrap_or(base.std)))
        .with_crop_pct(cfg.crop_pct.unwrap_or(base.crop_pct));
    let names = match hub.label_names {
        None => None,
        Some(LabelNames::List(names)) => Some(names),
        Some(LabelNames::Map(map)) => {
            let mut names = vec![String::new(); map.len()];
            for (key, name) in map {
                let index: usize = key.parse().ok().filter(|&i| i < names.len()).ok_or_else(|| {
                    format!(
                        "label_names key `{key}` is not a class index below {}",
                        names.len()
                    )
                })?;
                names[index] = name;
            }
            Some(names)
        }
    };
    if let Some(names) = &names {
        if names.len() != config.num_classes {
            return Err(format!(
                "{} label_names for num_classes = {}",
                names.len(),
                config.num_classes
            ));
        }
    }
    config = config.with_label_names(names);
    Ok(config)
}

/// timm's `config.json` for a model gaze trained: the architecture, the arguments that differ
/// from it, the class names and the preprocessing, so that timm rebuilds the same model.
pub fn hub_config_json(config: &VitConfig, architecture: &str) -> Result<String, String> {
    let base = find_timm_model(architecture)?;
    let mut model_args = serde_json::Map::new();
    let mut differs = |key: &str, ours: serde_json::Value, theirs: serde_json::Value| {
        if ours != theirs {
            model_args.insert(key.into(), ours);
        }
    };
    use serde_json::json;
    differs("img_size", json!(config.img_size[0]), json!(base.img_size));
    differs("patch_size", json!(config.patch_size), json!(base.patch_size));
    differs("embed_dim", json!(config.embed_dim), json!(base.embed_dim));
    differs("depth", json!(config.depth), json!(base.depth));
    differs("num_heads", json!(config.num_heads), json!(base.num_heads));
    differs("mlp_ratio", json!(config.mlp_ratio), json!(base.mlp_ratio));
    let mut value = json!({
        "architecture": base.architecture(),
        "num_classes": config.num_classes,
        "num_features": config.embed_dim,
        "global_pool": "token",
    });
    if let Some(names) = &config.label_names {
        value["label_names"] = json!(names);
    }
    if !model_args.is_empty() {
        value["model_args"] = serde_json::Value::Object(model_args);
    }
    value["pretrained_cfg"] = json!({
        "input_size": [3, config.img_size[0], config.img_size[1]],
        "interpolation": "bicubic",
        "crop_pct": config.crop_pct,
        "crop_mode": "center",
        "mean": config.mean,
        "std": config.std,
        "num_classes": config.num_classes,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    });
    Ok(serde_json::to_string_pretty(&value).expect("JSON values serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_names_and_architectures_resolve() {
        let tagged = find_timm_model("vit_small_patch16_384.augreg_in21k_ft_in1k").unwrap();
        assert_eq!(tagged.config().unwrap().with_num_classes(1000), VitConfig::new());
        let bare = find_timm_model("vit_small_patch16_384").unwrap();
        assert_eq!(bare.name, tagged.name);
        let in21k = find_timm_model("vit_base_patch16_224.augreg_in21k").unwrap();
        assert_eq!(in21k.num_classes, 21843);
        let mae = find_timm_model("vit_base_patch16_224.mae").unwrap();
        assert_eq!((mae.num_classes, mae.mean), (0, [0.485, 0.456, 0.406]));
        let large = find_timm_model("vit_large_patch32_384")
            .unwrap()
            .config()
            .unwrap();
        assert_eq!((large.embed_dim, large.depth, large.patch_size), (1024, 24, 32));
        for bad in ["vit_small_patch16_384.nope", "vit_huge_patch14_224", "resnet50"] {
            let err = find_timm_model(bad).unwrap_err();
            assert!(
                err.contains(bad) && err.contains("vit_small_patch16_384.augreg_in1k"),
                "{err}"
            );
        }
        assert_eq!(timm_models().iter().filter(|m| m.default_tag).count(), 14);
    }

    #[test]
    fn hub_configs_are_read_and_unsupported_settings_refused() {
        let text = r#"{"architecture": "vit_tiny_patch16_224", "num_classes": 2,
            "label_names": {"1": "dog", "0": "cat"}, "model_args": {"img_size": 32, "depth": 1},
            "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}}"#;
        let c = parse_hub_config(text).unwrap();
        assert_eq!(
            (c.img_size, c.depth, c.embed_dim, c.num_classes),
            ([32, 32], 1, 192, 2)
        );
        assert_eq!(c.label_names.as_deref().unwrap(), ["cat", "dog"]);
        assert_eq!((c.mean[0], c.crop_pct), (0.485, 0.875));
        let json = hub_config_json(&c, "vit_tiny_patch16_224").unwrap();
        assert_eq!(parse_hub_config(&json).unwrap(), c);
        for (change, why) in [
            (
                r#""crop_pct": 0.875"#,
                r#""crop_pct": 0.875, "interpolation": "bilinear""#,
            ),
            (r#""depth": 1"#, r#""depth": 1, "class_token": false"#),
            (r#""vit_tiny_patch16_224""#, r#""vit_huge_patch14_224""#),
            (r#""num_classes": 2"#, r#""num_classes": 3"#),
        ] {
            let err = parse_hub_config(&text.replace(change, why)).unwrap_err();
            let named = ["bilinear", "class_token", "vit_huge", "2 label_names"];
            assert!(named.iter().any(|n| err.contains(n)), "{err}");
        }
    }
}
