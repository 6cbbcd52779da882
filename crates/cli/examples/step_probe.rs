use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use gaze_vit::train::{OptimSection, OptimizerKind, build_optimizer, cross_entropy};
use gaze_vit::{VitConfig, parse_device};
use std::time::Instant;
#[path = "../src/allocator.rs"]
mod allocator;
fn main() {
    allocator::keep_freed_memory();
    let device = parse_device("flex").unwrap();
    let config = VitConfig::new().with_num_classes(37);
    let train_device = device.clone().autodiff();
    let mut model = config.init(&train_device);
    let optim_config = OptimSection {
        name: OptimizerKind::Sgd,
        lr: 3e-4,
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-8,
        grad_accum: 1,
        clip_grad_norm: None,
        label_smoothing: 0.0,
    };
    let mut optim = build_optimizer(&optim_config);
    let x = Tensor::<4>::random([8, 3, 384, 384], Distribution::Normal(0.0, 1.0), &train_device);
    let labels: Vec<i64> = (0..8).collect();
    for step in 0..5 {
        let t0 = Instant::now();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [8]), &train_device);
        let (loss, _) = cross_entropy(model.forward(x.clone()), y, 0.0);
        let _ = loss.clone().into_data();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        let grads = GradientsParams::from_grads(grads, &model);
        let t3 = Instant::now();
        model = optim.step(3e-4, model.clone(), grads);
        let _ = model.head.bias.as_ref().map(|b| b.val().into_data());
        let t4 = Instant::now();
        println!(
            "step {step}: forward {:.3} backward {:.3} from_grads {:.3} optim {:.3} total {:.3}",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            (t4 - t3).as_secs_f64(),
            (t4 - t0).as_secs_f64()
        );
    }
}
