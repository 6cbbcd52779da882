//! torchvision's ResNet (Bottleneck with the stride on the 3x3 convolution, or BasicBlock)
//! with frozen batch norm, field names as in the checkpoint (`conv1`, `bn1`, `layer1.0.conv2`).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::CatrConfig;

/// Batch norm with fixed statistics and affine (DETR's `FrozenBatchNorm2d`, eps 1e-5).
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
}

impl FrozenBatchNorm2d {
    fn new(channels: usize, device: &Device) -> Self {
        let ones = || Param::from_tensor(Tensor::ones([channels], device)).set_require_grad(false);
        let zeros = || Param::from_tensor(Tensor::zeros([channels], device)).set_require_grad(false);
        Self {
            weight: ones(),
            bias: zeros(),
            running_mean: zeros(),
            running_var: ones(),
        }
    }

    /// `x * k + (bias - mean * k)` with `k = weight / sqrt(var + 1e-5)`, per channel.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [c] = self.weight.dims();
        let scale = self.weight.val() * self.running_var.val().add_scalar(1e-5).sqrt().recip();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, dilation: usize, device: &Device) -> Conv2d {
    let pad = dilation * (kernel - 1) / 2;
    Conv2dConfig::new([c_in, c_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_dilation([dilation, dilation])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

/// A residual block. Bottleneck: 1x1 → 3x3 (stride, dilation) → 1x1 (4x width). Basic:
/// 3x3 (stride) → 3x3, no `conv3`. Each convolution is followed by frozen BN; the shortcut
/// projects when the shape changes.
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: FrozenBatchNorm2d,
    /// Only in bottleneck blocks.
    pub conv3: Option<Conv2d>,
    pub bn3: Option<FrozenBatchNorm2d>,
    /// Checkpoint `downsample.0`: the projecting shortcut of a stage's first block.
    pub downsample_conv: Option<Conv2d>,
    /// Checkpoint `downsample.1`.
    pub downsample_bn: Option<FrozenBatchNorm2d>,
}

impl Bottleneck {
    fn new(
        c_in: usize,
        width: usize,
        stride: usize,
        dilation: usize,
        bottleneck: bool,
        device: &Device,
    ) -> Self {
        let out = if bottleneck { width * 4 } else { width };
        let project = stride != 1 || c_in != out;
        let (conv1, conv2) = if bottleneck {
            (
                conv(c_in, width, 1, 1, 1, device),
                conv(width, width, 3, stride, dilation, device),
            )
        } else {
            (
                conv(c_in, width, 3, stride, dilation, device),
                conv(width, width, 3, 1, dilation, device),
            )
        };
        Self {
            conv1,
            bn1: FrozenBatchNorm2d::new(width, device),
            conv2,
            bn2: FrozenBatchNorm2d::new(width, device),
            conv3: bottleneck.then(|| conv(width, out, 1, 1, 1, device)),
            bn3: bottleneck.then(|| FrozenBatchNorm2d::new(out, device)),
            downsample_conv: project.then(|| conv(c_in, out, 1, stride, 1, device)),
            downsample_bn: project.then(|| FrozenBatchNorm2d::new(out, device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = relu(self.bn1.forward(self.conv1.forward(x.clone())));
        let out = self.bn2.forward(self.conv2.forward(out));
        let out = match (&self.conv3, &self.bn3) {
            (Some(c), Some(b)) => b.forward(c.forward(relu(out))),
            _ => out,
        };
        let shortcut = match (&self.downsample_conv, &self.downsample_bn) {
            (Some(c), Some(b)) => b.forward(c.forward(x)),
            _ => x,
        };
        relu(out + shortcut)
    }
}

/// The ResNet body up to `layer4` (no pooling head).
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm2d,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<Bottleneck>,
    pub layer2: Vec<Bottleneck>,
    pub layer3: Vec<Bottleneck>,
    pub layer4: Vec<Bottleneck>,
}

impl ResNet {
    pub fn new(config: &CatrConfig, device: &Device) -> Self {
        let w = config.resnet_width;
        let mut c_in = w;
        let mut dilation = 1;
        let mut stage = |width: usize, blocks: usize, stride: usize, dilate: bool| {
            // torchvision `_make_layer`: a dilated stage keeps stride 1, and its first block
            // gets the *previous* dilation.
            let previous = dilation;
            let stride = if dilate {
                dilation *= stride;
                1
            } else {
                stride
            };
            let bottleneck = config.bottleneck;
            let mut layer = vec![Bottleneck::new(c_in, width, stride, previous, bottleneck, device)];
            c_in = width * config.expansion();
            layer.extend((1..blocks).map(|_| Bottleneck::new(c_in, width, 1, dilation, bottleneck, device)));
            layer
        };
        let b = config.resnet_blocks;
        let layer1 = stage(w, b[0], 1, false);
        let layer2 = stage(w * 2, b[1], 2, false);
        let layer3 = stage(w * 4, b[2], 2, false);
        let layer4 = stage(w * 8, b[3], 2, config.dilation);
        Self {
            conv1: Conv2dConfig::new([3, w], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .init(device),
            bn1: FrozenBatchNorm2d::new(w, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }

    /// `[batch, 3, h, w]` to `[batch, 8 * expansion * width, ceil(h / 16), ceil(w / 16)]`
    /// (dilated; `/ 32` otherwise).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self
            .maxpool
            .forward(relu(self.bn1.forward(self.conv1.forward(x))));
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .fold(x, |x, block| block.forward(x))
    }
}
