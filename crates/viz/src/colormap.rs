//! Colormaps for heat maps.

use std::str::FromStr;

/// Maps values in [0, 1] to colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Perceptually uniform (matplotlib's default), from `colorous`.
    #[default]
    Viridis,
    /// matplotlib's `jet`, for figures that must look like older papers. `colorous` only has
    /// the d3 schemes, so jet's piecewise-linear definition is written out here.
    Jet,
}

/// matplotlib `_jet_data`: per channel, (position, value) knots.
const JET: [&[(f32, f32)]; 3] = [
    &[(0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)],
    &[
        (0.0, 0.0),
        (0.125, 0.0),
        (0.375, 1.0),
        (0.64, 1.0),
        (0.91, 0.0),
        (1.0, 0.0),
    ],
    &[(0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)],
];

fn piecewise(knots: &[(f32, f32)], t: f32) -> f32 {
    for pair in knots.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if t <= x1 {
            return y0 + (y1 - y0) * (t - x0) / (x1 - x0);
        }
    }
    knots.last().map_or(0.0, |k| k.1)
}

impl Colormap {
    /// Colour of `t`, clamped to [0, 1]; NaN maps to 0.
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
        match self {
            Colormap::Viridis => {
                let c = colorous::VIRIDIS.eval_continuous(t as f64);
                [c.r, c.g, c.b]
            }
            Colormap::Jet => JET.map(|k| (piecewise(k, t) * 255.0).round() as u8),
        }
    }
}

impl FromStr for Colormap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viridis" => Ok(Colormap::Viridis),
            "jet" => Ok(Colormap::Jet),
            other => Err(format!("unknown colormap `{other}`; use viridis or jet")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_match_matplotlib() {
        assert_eq!(Colormap::Jet.rgb(0.0), [0, 0, 128]);
        assert_eq!(Colormap::Jet.rgb(1.0), [128, 0, 0]);
        assert_eq!(Colormap::Jet.rgb(0.5), [123, 255, 123]);
        assert_eq!(Colormap::Viridis.rgb(0.0), [68, 1, 84]);
        assert_eq!(Colormap::Viridis.rgb(1.0), [253, 231, 37]);
        assert_eq!(Colormap::Viridis.rgb(f32::NAN), Colormap::Viridis.rgb(0.0));
    }
}
