//! The settings discussion: other training settings beside the recipe, compared. On the
//! real data `configs/ablations/*` (ViT-B only with its weights); on the synthetic set a
//! learning rate ten times the recipe's, so that the section is never empty.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::classification::Classification;
use super::report::{Section, escape};
use super::runner::{Runner, read_json};

/// One setting: its name, config, initial weights, and overrides beyond `--set`.
struct Setting {
    name: String,
    config: PathBuf,
    init: Option<PathBuf>,
    extra: Vec<String>,
}

/// The settings to train beside the recipe, and those that cannot run, with the reason.
fn settings(c: &Classification, vit_b_weights: Option<&Path>) -> Result<(Vec<Setting>, Vec<String>)> {
    if c.data.is_none() {
        let setting = Setting {
            name: "lr_x10".into(),
            config: c.config(),
            init: None,
            extra: vec!["optim.lr=1e-2".into()],
        };
        return Ok((vec![setting], vec![]));
    }
    let dir = c.root.join("configs/ablations");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: could not list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    let (mut run, mut not_run) = (Vec::new(), Vec::new());
    for config in configs {
        let name = config
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let init = match name.as_str() {
            "scratch" => None,
            "vit_base" => match vit_b_weights {
                Some(w) => Some(w.to_path_buf()),
                None => {
                    not_run.push(format!("{name}: not run (pass --vit-b-weights)"));
                    continue;
                }
            },
            _ => c.vit_weights.map(Path::to_path_buf),
        };
        run.push(Setting {
            name,
            config,
            init,
            extra: vec![],
        });
    }
    Ok((run, not_run))
}

/// Trains every setting into `ablations/<name>`, compares them with the recipe's run
/// `recipe`, and words each against it.
pub fn run(
    c: &Classification,
    recipe: &Path,
    vit_b_weights: Option<&Path>,
    r: &mut Runner,
) -> Result<Section> {
    let (settings, not_run) = settings(c, vit_b_weights)?;
    let mut runs = vec![recipe.to_path_buf()];
    for s in &settings {
        let run = c.out.join("ablations").join(&s.name);
        c.train(
            r,
            &format!("ablation {}", s.name),
            (&s.config, s.init.as_deref()),
            &run,
            &s.extra,
        )?;
        runs.push(run);
    }
    let (table, curves) = r.compare("compare the settings", &runs, &c.out.join("compare-settings"))?;
    let best = |run: &Path| -> Result<f64> {
        // `gaze train`'s summary.json.
        let summary: serde_json::Value = read_json(&run.join("summary.json"))?;
        Ok(summary["best_val_accuracy"].as_f64().unwrap_or(0.0))
    };
    let reference = best(recipe)?;
    let mut lines = Vec::new();
    for (s, run) in settings.iter().zip(&runs[1..]) {
        lines.push(format!(
            "- {}: {:.1} % vs {:.1} % for the recipe",
            escape(&s.name),
            100.0 * best(run)?,
            100.0 * reference
        ));
    }
    lines.extend(not_run.iter().map(|l| format!("- {}", escape(l))));
    let table =
        std::fs::read_to_string(&table).with_context(|| format!("{}: could not read", table.display()))?;
    Ok(Section::new(
        "Settings compared",
        format!(
            "Best validation accuracy of each setting, trained on the same data with the same overrides, against the recipe (`vit`).\n\n{}\n\n{table}",
            lines.join("\n")
        ),
        vec![curves],
    ))
}
