//! What the model saw and where it looked: inputs for attention figures and analyses.

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use gaze_data::image::RgbImage;
use ndarray::{Array2, Array3};

use crate::{VisionTransformer, VitConfig};

/// One image through the model, with every block's attention.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The image resized as the eval transform does it, before cropping: the model's view
    /// of the picture with its aspect ratio intact.
    pub view: RgbImage,
    /// `(left, top, size)` of the model's square input inside `view`.
    pub crop: (u32, u32, u32),
    /// Patch grid `[rows, cols]`.
    pub grid: [usize; 2],
    /// Per block, first to last, attention probabilities `[heads, tokens, tokens]` (class
    /// token first).
    pub attentions: Vec<Array3<f32>>,
    /// Class probabilities (softmax of the logits).
    pub probabilities: Vec<f32>,
}

/// Runs `image` through `model` on the explicit-attention path.
pub fn explain(
    model: &VisionTransformer,
    config: &VitConfig,
    image: &RgbImage,
    device: &Device,
) -> Explanation {
    let transform = config.eval_transform();
    let view = transform.resize(image);
    let (left, top) = transform.crop_origin(view.width(), view.height());
    let size = transform.size;
    let crop = gaze_data::image::imageops::crop_imm(&view, left, top, size, size).to_image();
    let input = transform.to_tensor(&crop);
    let batch = Tensor::<4>::from_data(
        TensorData::new(input, [1, 3, size as usize, size as usize]),
        device,
    );
    let out = model.forward_with_attention(batch);
    let to_array = |t: Tensor<4>| {
        let [_, heads, tokens, _] = t.dims();
        let values = t
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 attention");
        Array3::from_shape_vec((heads, tokens, tokens), values).expect("[1, heads, tokens, tokens]")
    };
    let probabilities = softmax(out.logits, 1)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 probabilities");
    Explanation {
        view,
        crop: (left, top, size),
        grid: config.grid(),
        attentions: out.attentions.into_iter().map(to_array).collect(),
        probabilities,
    }
}

impl VisionTransformer {
    /// Position embeddings of the patches (class-token row dropped), `[patches, dim]`,
    /// patches row-major over the grid.
    pub fn patch_pos_embed(&self) -> Array2<f32> {
        let [_, tokens, dim] = self.pos_embed.dims();
        let rows = self.pos_embed.val().narrow(1, 1, tokens - 1);
        let values = rows
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32 pos_embed");
        Array2::from_shape_vec((tokens - 1, dim), values).expect("[1, tokens, dim]")
    }
}
