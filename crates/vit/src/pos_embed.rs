//! Position embeddings for another patch grid, as `timm.layers.resample_abs_pos_embed`.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use gaze_data::resize::resize_plane_bicubic;

use crate::{VisionTransformer, VitConfig};

/// Resamples `[1, prefix + gh*gw, dim]` position embeddings from grid `old` to grid `new`
/// with antialiased bicubic interpolation; the `num_prefix_tokens` leading rows (the class
/// token) are kept as they are. Like timm, a square target with an unchanged token count is
/// returned untouched.
pub fn resample_pos_embed(
    pos_embed: Tensor<3>,
    old: [usize; 2],
    new: [usize; 2],
    num_prefix_tokens: usize,
) -> Tensor<3> {
    let [_, tokens, dim] = pos_embed.dims();
    assert_eq!(
        tokens,
        num_prefix_tokens + old[0] * old[1],
        "pos_embed does not match its grid"
    );
    if tokens == num_prefix_tokens + new[0] * new[1] && new[0] == new[1] {
        return pos_embed;
    }
    let device = pos_embed.device();
    let values: Vec<f64> = pos_embed
        .into_data()
        .convert::<f64>()
        .try_to_vec()
        .expect("f64 data");
    let (prefix, grid) = values.split_at(num_prefix_tokens * dim);
    // [tokens, dim] -> [dim, gh, gw], resample, back to [tokens, dim].
    let mut planes = vec![0.0; grid.len()];
    for (t, row) in grid.chunks(dim).enumerate() {
        for (c, v) in row.iter().enumerate() {
            planes[c * old[0] * old[1] + t] = *v;
        }
    }
    let resized = resize_plane_bicubic(&planes, dim, (old[0], old[1]), (new[0], new[1]));
    let cells = new[0] * new[1];
    let mut out: Vec<f32> = prefix.iter().map(|&v| v as f32).collect();
    out.resize(prefix.len() + cells * dim, 0.0);
    for t in 0..cells {
        for c in 0..dim {
            out[prefix.len() + t * dim + c] = resized[c * cells + t] as f32;
        }
    }
    Tensor::from_data(TensorData::new(out, [1, num_prefix_tokens + cells, dim]), &device)
}

impl VisionTransformer {
    /// Adapts the model to `img_size` inputs by resampling its position embeddings, and
    /// returns the matching config.
    pub fn set_input_size(self, config: &VitConfig, img_size: [usize; 2]) -> (Self, VitConfig) {
        let new_config = config.clone().with_img_size(img_size);
        let pos_embed = resample_pos_embed(self.pos_embed.val(), config.grid(), new_config.grid(), 1);
        let model = Self {
            pos_embed: Param::from_tensor(pos_embed),
            ..self
        };
        (model, new_config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn constant_embeddings_stay_constant_and_prefix_is_kept() {
        let device = Device::flex();
        let mut values = vec![9.0f32; 4];
        values.extend(std::iter::repeat_n(0.25, 4 * 6));
        let pe = Tensor::<3>::from_data(TensorData::new(values, [1, 7, 4]), &device);
        let out = resample_pos_embed(pe, [2, 3], [5, 4], 1);
        assert_eq!(out.dims(), [1, 21, 4]);
        let v = out.into_data().try_to_vec::<f32>().unwrap();
        assert!(v[..4].iter().all(|&x| x == 9.0));
        assert!(v[4..].iter().all(|&x| (x - 0.25).abs() < 1e-6));
    }
}
