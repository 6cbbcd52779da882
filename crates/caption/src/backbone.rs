//! torchvision's ResNet (Bottleneck with the stride on the 3x3 convolution, or BasicBlock)
//! with frozen batch norm, field names as in the checkpoint (`conv1`, `bn1`, `layer1.0.conv2`).

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::{self, relu};
use burn::tensor::{Device, Tensor};

use crate::CatrConfig;
use gaze_nn::ops::conv_bn;

/// Batch norm with fixed statistics and affine (DETR's `FrozenBatchNorm2d`, eps 1e-5).
#[derive(Module, Debug)]
pub struct FrozenBatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
    /// Normalise by the batch's own statistics (training from scratch) instead of the
    /// running ones.
    batch_statistics: bool,
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
            batch_statistics: false,
        }
    }

    /// The same with the statistics of `x` `[batch, channels, h, w]` (what ImageNet training
    /// leaves in a pretrained model's frozen batch norms), and `x` normalised by them.
    fn calibrated(self, x: Tensor<4>) -> (Self, Tensor<4>) {
        let [b, c, h, w] = x.dims();
        let flat = x.clone().detach().swap_dims(0, 1).reshape([c, b * h * w]);
        let mean = flat.clone().mean_dim(1).reshape([c]);
        let var = flat.var(1).reshape([c]);
        let fixed = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        let bn = Self {
            running_mean: fixed(mean),
            running_var: fixed(var),
            batch_statistics: false,
            ..self
        };
        let y = bn.forward(x);
        (bn, y)
    }

    /// Batch norm in training mode: trainable `weight` and `bias`, batch statistics.
    fn for_training(self) -> Self {
        Self {
            weight: self.weight.set_require_grad(true),
            bias: self.bias.set_require_grad(true),
            batch_statistics: true,
            ..self
        }
    }

    /// `x * k + (bias - mean * k)` with `k = weight / sqrt(var + 1e-5)`, per channel.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [c] = self.weight.dims();
        if self.batch_statistics {
            // As `nn.BatchNorm2d` in training: the biased variance of the batch.
            let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3); // [1, c, 1, 1]
            let centred = x - mean;
            let var = centred.clone().square().mean_dim(0).mean_dim(2).mean_dim(3);
            let normalised = centred * var.add_scalar(1e-5).sqrt().recip();
            return normalised * self.weight.val().reshape([1, c, 1, 1])
                + self.bias.val().reshape([1, c, 1, 1]);
        }
        let (scale, shift) = self.scale_shift();
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }

    /// `k = weight / sqrt(var + 1e-5)` and `bias - mean * k`, per channel.
    fn scale_shift(&self) -> (Tensor<1>, Tensor<1>) {
        let scale = self.weight.val() * self.running_var.val().add_scalar(1e-5).sqrt().recip();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        (scale, shift)
    }

    /// This batch norm of `conv(x)`, then ReLU if `relu`; with the running statistics in one
    /// pass on `flex` ([`conv_bn`]).
    fn after(&self, conv: &Conv2d, x: Tensor<4>, relu: bool) -> Tensor<4> {
        if self.batch_statistics {
            let y = self.forward(conv.forward(x));
            return if relu { activation::relu(y) } else { y };
        }
        let (scale, shift) = self.scale_shift();
        conv_bn(conv, x, scale, shift, relu)
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

    fn for_training(self) -> Self {
        Self {
            bn1: self.bn1.for_training(),
            bn2: self.bn2.for_training(),
            bn3: self.bn3.map(FrozenBatchNorm2d::for_training),
            downsample_bn: self.downsample_bn.map(FrozenBatchNorm2d::for_training),
            ..self
        }
    }

    /// [`ResNet::calibrated`] for one block: its output on `x` as well.
    fn calibrated(self, x: Tensor<4>) -> (Self, Tensor<4>) {
        let (bn1, out) = self.bn1.calibrated(self.conv1.forward(x.clone()));
        let (bn2, mut out) = self.bn2.calibrated(self.conv2.forward(relu(out)));
        let bn3 = match (&self.conv3, self.bn3) {
            (Some(conv3), Some(bn3)) => {
                let (bn3, y) = bn3.calibrated(conv3.forward(relu(out)));
                out = y;
                Some(bn3)
            }
            (_, bn3) => bn3,
        };
        let (downsample_bn, shortcut) = match (&self.downsample_conv, self.downsample_bn) {
            (Some(conv), Some(bn)) => {
                let (bn, y) = bn.calibrated(conv.forward(x));
                (Some(bn), y)
            }
            (_, bn) => (bn, x),
        };
        let block = Self {
            bn1,
            bn2,
            bn3,
            downsample_bn,
            ..self
        };
        (block, relu(out + shortcut))
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.bn1.after(&self.conv1, x.clone(), true);
        // A bottleneck's 3x3 output goes through ReLU into `conv3`; a basic block's joins
        // the shortcut first.
        let out = self.bn2.after(&self.conv2, out, self.conv3.is_some());
        let out = match (&self.conv3, &self.bn3) {
            (Some(c), Some(b)) => b.after(c, out, false),
            _ => out,
        };
        let shortcut = match (&self.downsample_conv, &self.downsample_bn) {
            (Some(c), Some(b)) => b.after(c, x, false),
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

    /// For inference after training from scratch: every batch norm is frozen with the
    /// statistics of its input on `images`, layer by layer, each computed after the ones
    /// before it are set (re-estimating them, as `torch.optim.swa_utils.update_bn` does, so
    /// that the frozen network computes what the trained one did on typical batches).
    pub fn calibrated(self, images: Tensor<4>) -> Self {
        let (bn1, x) = self.bn1.calibrated(self.conv1.forward(images));
        let mut x = self.maxpool.forward(relu(x));
        Self { bn1, ..self }.map_blocks(|block| {
            let (block, y) = block.calibrated(x.clone());
            x = y;
            block
        })
    }

    /// For training from scratch, where there are no ImageNet statistics to freeze: batch
    /// norms train as torchvision trains a ResNet (batch statistics, trainable affine, the
    /// convolutions have no biases); [`ResNet::calibrated`] freezes them afterwards.
    pub fn for_training(self) -> Self {
        Self {
            bn1: self.bn1.for_training(),
            ..self
        }
        .map_blocks(Bottleneck::for_training)
    }

    /// Every block replaced by `f(block)`, in forward order.
    fn map_blocks(self, mut f: impl FnMut(Bottleneck) -> Bottleneck) -> Self {
        let mut layer = |blocks: Vec<Bottleneck>| blocks.into_iter().map(&mut f).collect();
        let (layer1, layer2, layer3, layer4) = (
            layer(self.layer1),
            layer(self.layer2),
            layer(self.layer3),
            layer(self.layer4),
        );
        Self {
            layer1,
            layer2,
            layer3,
            layer4,
            ..self
        }
    }

    /// `[batch, 3, h, w]` to `[batch, 8 * expansion * width, ceil(h / 16), ceil(w / 16)]`
    /// (dilated; `/ 32` otherwise).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.maxpool.forward(self.bn1.after(&self.conv1, x, true));
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .fold(x, |x, block| block.forward(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Training-mode batch norm normalises each channel of the batch to mean `bias` and
    /// standard deviation `weight`, and its autodiff gradient (through the batch mean and
    /// variance) matches a central finite difference.
    #[test]
    fn training_mode_batch_norm_and_its_gradient() {
        let device = Device::flex().autodiff();
        let _draws = gaze_nn::device::seeded(&device, 4);
        let mut bn = FrozenBatchNorm2d::new(3, &device).for_training();
        bn.weight = Param::from_tensor(Tensor::from_floats([0.5, 2.0, 1.0], &device));
        bn.bias = Param::from_tensor(Tensor::from_floats([1.0, -1.0, 0.0], &device));
        let x = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(3.0, 2.0), &device);
        let y = bn.forward(x.clone()).swap_dims(0, 1).reshape([3, 40]);
        let mean: Vec<f32> = y.clone().mean_dim(1).into_data().try_to_vec::<f32>().unwrap();
        let std: Vec<f32> = y.var_bias(1).sqrt().into_data().try_to_vec::<f32>().unwrap();
        for (c, (m, s)) in mean.iter().zip(&std).enumerate() {
            assert!(
                (m - [1.0, -1.0, 0.0][c]).abs() < 1e-5 && (s - [0.5, 2.0, 1.0][c]).abs() < 1e-3,
                "{c}: {m} {s}"
            );
        }
        let probe = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
        let direction = Tensor::<4>::random([2, 3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
        let x = x.require_grad();
        let loss = |x: Tensor<4>| (bn.forward(x).powf_scalar(2.0) * probe.clone()).sum();
        let grads = loss(x.clone()).backward();
        let analytic = (x.grad(&grads).unwrap() * direction.clone().inner())
            .sum()
            .into_scalar::<f32>() as f64;
        let at = |eps: f64| {
            loss(x.clone().detach() + direction.clone().mul_scalar(eps)).into_scalar::<f32>() as f64
        };
        let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
        assert!(
            (numeric - analytic).abs() < 1e-2 * analytic.abs().max(1.0),
            "{numeric} vs {analytic}"
        );
    }

    /// Calibrating the frozen statistics on a batch reproduces training-mode batch norm on
    /// that batch (up to the unbiased variance the running statistics keep).
    #[test]
    fn calibration_freezes_what_training_mode_computes() {
        let device = Device::flex();
        let _draws = gaze_nn::device::seeded(&device, 2);
        let config = CatrConfig::new()
            .with_resnet_blocks([1, 1, 1, 1])
            .with_resnet_width(4);
        let net = ResNet::new(&config, &device).for_training();
        let x = Tensor::<4>::random([16, 3, 32, 48], Distribution::Normal(0.0, 1.0), &device);
        let training = net.forward(x.clone());
        let frozen = net.calibrated(x.clone()).forward(x);
        let diff = (training.clone() - frozen).abs().max().into_scalar::<f32>();
        let scale = training.abs().max().into_scalar::<f32>();
        assert!(diff < 1e-2 * scale, "{diff} of {scale}");
    }
}
