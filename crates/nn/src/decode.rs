//! Kernels for greedy decoding, one row at a time on plain slices. A decoder step multiplies
//! one vector by each weight matrix, so it is bound by reading the weights, and it has too
//! little arithmetic per matrix to pay for waking a rayon worker (25–40 µs on the
//! development VM, against 10–50 µs for a whole 256-wide layer). So a [`Team`] keeps a few
//! threads spinning for the length of one caption and splits every large product between
//! them and the caller.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::simd::{dot, multiversion, softmax_row};

/// Below this many weights (64 KB) one thread does the whole product: handing out parts
/// costs more than it saves.
const SPLIT_FROM: usize = 1 << 14;

/// At most this many threads share one product: more do not read memory faster.
const MAX_THREADS: usize = 4;

/// A weight matrix, `[d_in, d_out]` row-major: `f32`, or bfloat16 bits.
#[derive(Clone, Copy)]
enum Weight<'w> {
    F32(&'w [f32]),
    Bf16(&'w [u16]),
}

impl<'w> Weight<'w> {
    fn len(&self) -> usize {
        match self {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
        }
    }

    /// Rows `rows` of a matrix `d_out` wide.
    fn rows(&self, rows: Range<usize>, d_out: usize) -> Weight<'w> {
        let span = rows.start * d_out..rows.end * d_out;
        match self {
            Weight::F32(w) => Weight::F32(&w[span]),
            Weight::Bf16(w) => Weight::Bf16(&w[span]),
        }
    }

    /// `out += x · self`.
    fn add_to(&self, out: &mut [f32], x: &[f32]) {
        match self {
            Weight::F32(w) => add_rows(out, x, w),
            Weight::Bf16(w) => add_rows_bf16(out, x, w),
        }
    }
}

/// One helper thread's mailbox: the caller posts a job (its input rows, their weight rows)
/// and bumps `posted`; the helper leaves its partial sum in `out` and sets `done` to match.
struct Mailbox<'w> {
    posted: AtomicUsize,
    done: AtomicUsize,
    job: Mutex<Job<'w>>,
}

struct Job<'w> {
    x: Vec<f32>,
    weight: Weight<'w>,
    out: Vec<f32>,
}

/// Threads that split vector-matrix products by rows, for weights that live at least `'w`.
/// Made by [`with_team`].
pub struct Team<'w> {
    mailboxes: Vec<Mailbox<'w>>,
    stop: AtomicBool,
}

/// Runs `f` with a [`Team`] of the rayon pool's size (at most four): its helpers spin while
/// `f` runs, so call this around a whole decoding, not per step.
pub fn with_team<'w, R>(f: impl FnOnce(&Team<'w>) -> R) -> R {
    let threads = rayon::current_num_threads().clamp(1, MAX_THREADS);
    let team = Team {
        mailboxes: (1..threads)
            .map(|_| Mailbox {
                posted: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                job: Mutex::new(Job {
                    x: Vec::new(),
                    weight: Weight::F32(&[]),
                    out: Vec::new(),
                }),
            })
            .collect(),
        stop: AtomicBool::new(false),
    };
    std::thread::scope(|scope| {
        for mailbox in &team.mailboxes {
            let stop = &team.stop;
            scope.spawn(move || serve(mailbox, stop));
        }
        // Stops the helpers even if `f` panics, so the scope can join them.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(&team.stop);
        f(&team)
    })
}

fn serve(mailbox: &Mailbox<'_>, stop: &AtomicBool) {
    let mut seen = 0;
    loop {
        let posted = mailbox.posted.load(Ordering::Acquire);
        if posted == seen {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
            continue;
        }
        let mut job = mailbox.job.lock().unwrap_or_else(|e| e.into_inner());
        let Job { x, weight, out } = &mut *job;
        out.fill(0.0);
        weight.add_to(out, x);
        drop(job);
        seen = posted;
        mailbox.done.store(posted, Ordering::Release);
    }
}

impl<'w> Team<'w> {
    /// `out = bias + x · weight` for one input row: `x` `[d_in]`, `weight` `[d_in, d_out]`
    /// row-major (burn's `Linear` layout), `out` `[d_out]`.
    pub fn vec_mat(&self, out: &mut [f32], x: &[f32], weight: &'w [f32], bias: Option<&[f32]>) {
        match bias {
            Some(bias) => out.copy_from_slice(bias),
            None => out.fill(0.0),
        }
        self.add(out, x, Weight::F32(weight));
    }

    /// `out += x · weight`, the rows split over the team.
    fn add(&self, out: &mut [f32], x: &[f32], weight: Weight<'w>) {
        let d_out = out.len();
        assert_eq!(weight.len(), x.len() * d_out, "weight is [{}, {d_out}]", x.len());
        let parts = (self.mailboxes.len() + 1)
            .min(weight.len().div_ceil(SPLIT_FROM))
            .min(x.len())
            .max(1);
        let rows = x.len().div_ceil(parts).max(1);
        let helpers = &self.mailboxes[..x.len().div_ceil(rows).max(1) - 1];
        for (i, mailbox) in helpers.iter().enumerate() {
            let span = (i + 1) * rows..((i + 2) * rows).min(x.len());
            let mut job = mailbox.job.lock().unwrap_or_else(|e| e.into_inner());
            job.x.clear();
            job.x.extend_from_slice(&x[span.clone()]);
            job.weight = weight.rows(span, d_out);
            job.out.resize(d_out, 0.0);
            drop(job);
            mailbox.posted.fetch_add(1, Ordering::Release);
        }
        let first = 0..rows.min(x.len());
        weight.rows(first.clone(), d_out).add_to(out, &x[first]);
        for mailbox in helpers {
            let posted = mailbox.posted.load(Ordering::Relaxed);
            while mailbox.done.load(Ordering::Acquire) != posted {
                std::hint::spin_loop();
            }
            let job = mailbox.job.lock().unwrap_or_else(|e| e.into_inner());
            out.iter_mut().zip(&job.out).for_each(|(o, p)| *o += p);
        }
    }
}

/// The word layer of a greedy decoder, `argmax(x · weight + bias)`, reading mostly a bfloat16
/// copy of the weight: half the bytes of a step that is bound by reading them. The bf16
/// logits are within `e_j = (2⁻⁸ + 2γ) ‖x‖ ‖w_j‖` of the f32 ones (bf16's unit roundoff plus
/// both sums' rounding, `γ = n·2⁻²⁴`, and the bias's), so every column whose bf16 logit plus
/// `e_j` reaches the best bf16 logit minus its `e` is recomputed in f32, and the argmax of
/// those is the argmax of all f32 logits, ties to the lowest index as
/// [`crate::argmax`]. Past [`ArgmaxHead::MAX_RECHECKS`] close calls it computes all
/// logits in f32 instead.
pub struct ArgmaxHead {
    weight: Vec<f32>,
    screen: Vec<u16>,
    column_norms: Vec<f32>,
    bias: Vec<f32>,
}

impl ArgmaxHead {
    /// Each recheck reads a strided column (about 4 µs for 512 rows, measured); past about
    /// this many the whole f32 product (2.4 ms for 512 x 30522) is cheaper.
    pub const MAX_RECHECKS: usize = 512;

    /// `weight` `[d_in, d_out]` row-major, `bias` `[d_out]`.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        let d_out = bias.len();
        assert_eq!(weight.len() % d_out.max(1), 0, "weight is [d_in, {d_out}]");
        let mut column_norms = vec![0f32; d_out];
        for row in weight.chunks_exact(d_out) {
            column_norms.iter_mut().zip(row).for_each(|(n, w)| *n += w * w);
        }
        column_norms.iter_mut().for_each(|n| *n = n.sqrt());
        Self {
            screen: weight.iter().map(|&w| to_bf16(w)).collect(),
            weight,
            column_norms,
            bias,
        }
    }

    /// All logits in f32, `[d_out]`.
    pub fn logits<'w>(&'w self, team: &Team<'w>, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.bias.len()];
        team.vec_mat(&mut out, x, &self.weight, Some(&self.bias));
        out
    }

    /// The index of the largest f32 logit; see the type's documentation.
    pub fn argmax<'w>(&'w self, team: &Team<'w>, x: &[f32]) -> usize {
        let d_out = self.bias.len();
        let mut screened = self.bias.clone();
        team.add(&mut screened, x, Weight::Bf16(&self.screen));
        // 1 % over the bound covers the rounding of the norms themselves.
        let gamma = x.len() as f32 * f32::EPSILON / 2.0;
        let scale = 1.01 * (1.0 / 256.0 + 2.0 * gamma) * x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let slack = |j: usize| {
            scale * self.column_norms[j] + 2.0 * f32::EPSILON * (screened[j].abs() + self.bias[j].abs())
        };
        let floor = (0..d_out)
            .map(|j| screened[j] - slack(j))
            .fold(f32::NEG_INFINITY, f32::max);
        let close: Vec<usize> = (0..d_out)
            .filter(|&j| screened[j] + slack(j) >= floor)
            .take(Self::MAX_RECHECKS + 1)
            .collect();
        if close.len() > Self::MAX_RECHECKS {
            return crate::argmax(&self.logits(team, x));
        }
        let mut best = (0, f32::NEG_INFINITY);
        for j in close {
            let exact = self.bias[j]
                + x.iter()
                    .zip(self.weight[j..].iter().step_by(d_out))
                    .map(|(x, w)| x * w)
                    .sum::<f32>();
            if exact > best.1 {
                best = (j, exact);
            }
        }
        best.0
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as its bits.
fn to_bf16(x: f32) -> u16 {
    (crate::ops::bf16::round_to_bf16_scalar(x).to_bits() >> 16) as u16
}

/// One query against `len` keys and values, `[len, heads * head_dim]` row-major each, as
/// multi-head attention: `weights` `[heads, len]` gets `softmax(q_h · k_h / sqrt(head_dim))`
/// per head and `out` `[heads * head_dim]` the heads' weighted values side by side.
pub fn attend_one(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    heads: usize,
    weights: &mut [f32],
    out: &mut [f32],
) {
    let d = q.len();
    let len = keys.len() / d;
    assert!(d.is_multiple_of(heads) && keys.len() == len * d && values.len() == len * d);
    assert!(weights.len() == heads * len && out.len() == d);
    attend_one_heads(q, keys, values, weights, out);
}

multiversion! {
    /// [`attend_one`] after its checks.
    fn attend_one_heads(q: &[f32], keys: &[f32], values: &[f32], weights: &mut [f32], out: &mut [f32]) {
        let d = q.len();
        let len = keys.len() / d;
        let head_dim = d / (weights.len() / len);
        let scale = (head_dim as f32).powf(-0.5);
        out.fill(0.0);
        for (h, weights) in weights.chunks_exact_mut(len).enumerate() {
            let span = h * head_dim..(h + 1) * head_dim;
            let q = &q[span.clone()];
            for (w, key) in weights.iter_mut().zip(keys.chunks_exact(d)) {
                *w = dot(q, &key[span.clone()]) * scale;
            }
            softmax_row(weights);
            let out = &mut out[span.clone()];
            for (&w, value) in weights.iter().zip(values.chunks_exact(d)) {
                out.iter_mut().zip(&value[span.clone()]).for_each(|(o, v)| *o += w * v);
            }
        }
    }
}

/// A weight element that widens to `f32`: `f32` itself, or bfloat16 bits as `u16`.
trait Widen: Copy {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

/// `out += x · weight` for `weight` `[x.len(), out.len()]` row-major, four rows per pass
/// over `out`.
#[inline(always)]
fn add_rows_of<W: Widen>(out: &mut [f32], x: &[f32], weight: &[W]) {
    let d_out = out.len();
    let (x4, x_tail) = x.split_at(x.len() / 4 * 4);
    let (w4, w_tail) = weight.split_at(x4.len() * d_out);
    for (x, w) in x4.chunks_exact(4).zip(w4.chunks_exact(4 * d_out)) {
        let (w0, w) = w.split_at(d_out);
        let (w1, w) = w.split_at(d_out);
        let (w2, w3) = w.split_at(d_out);
        for ((((o, a), b), c), d) in out.iter_mut().zip(w0).zip(w1).zip(w2).zip(w3) {
            *o += x[0] * a.widen() + x[1] * b.widen() + x[2] * c.widen() + x[3] * d.widen();
        }
    }
    for (&x, w) in x_tail.iter().zip(w_tail.chunks_exact(d_out)) {
        out.iter_mut().zip(w).for_each(|(o, w)| *o += x * w.widen());
    }
}

multiversion! {
    /// [`add_rows_of`] an `f32` weight.
    fn add_rows(out: &mut [f32], x: &[f32], weight: &[f32]) {
        add_rows_of(out, x, weight)
    }
}

multiversion! {
    /// [`add_rows_of`] a bfloat16 weight.
    fn add_rows_bf16(out: &mut [f32], x: &[f32], weight: &[u16]) {
        add_rows_of(out, x, weight)
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Distribution, Tensor, TensorData, Tolerance, activation, module};

    use crate::testing::flex;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[-5.0]), 0);
    }

    #[test]
    fn vec_mat_equals_the_linear_layer() {
        let (device, _draws) = flex();
        // 67 x 15700 is split over the team, with a partial last block and a row tail; 8 x 5
        // is not; 1024 x 1024 has no bias.
        for (d_in, d_out, bias) in [(67, 15700, true), (8, 5, true), (1024, 1024, false)] {
            let linear = burn::nn::LinearConfig::new(d_in, d_out)
                .with_bias(bias)
                .init(&device);
            let x = Tensor::<2>::random([1, d_in], Distribution::Normal(0.0, 1.0), &device);
            let expected = linear.forward(x.clone()).into_data();
            let values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap();
            let bias = linear.bias.as_ref().map(|b| values(b.val().unsqueeze()));
            let (x, weight) = (values(x), values(linear.weight.val()));
            let mut out = vec![f32::NAN; d_out];
            with_team(|team| team.vec_mat(&mut out, &x, &weight, bias.as_deref()));
            TensorData::new(out, [1, d_out]).assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn attend_one_equals_burns_attention_and_softmax() {
        let (device, _draws) = flex();
        let (heads, head_dim, len) = (3, 12, 7);
        let d = heads * head_dim;
        let random = |rows: usize| Tensor::<3>::random([1, rows, d], Distribution::Normal(0.0, 2.0), &device);
        let (q, k, v) = (random(1), random(len), random(len));
        let split = |x: Tensor<3>| {
            let rows = x.dims()[1];
            x.reshape([1, rows, heads, head_dim]).swap_dims(1, 2)
        };
        let values = |t: Tensor<3>| t.into_data().try_into_vec::<f32>().unwrap();
        let (mut weights, mut out) = (vec![f32::NAN; heads * len], vec![f32::NAN; d]);
        attend_one(
            &values(q.clone()),
            &values(k.clone()),
            &values(v.clone()),
            heads,
            &mut weights,
            &mut out,
        );
        let scores = split(q.clone()).matmul(split(k.clone()).swap_dims(2, 3)) / (head_dim as f64).sqrt();
        activation::softmax(scores, 3)
            .into_data()
            .assert_approx_eq::<f32>(
                &TensorData::new(weights, [1, heads, 1, len]),
                Tolerance::absolute(1e-6),
            );
        let expected = module::attention(
            split(q),
            split(k),
            split(v),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([1, d]);
        TensorData::new(out, [1, d])
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn argmax_head_finds_the_f32_argmax() {
        let (d_in, d_out) = (96, 3001);
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut normal = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut weight: Vec<f32> = (0..d_in * d_out).map(|_| normal()).collect();
        let bias: Vec<f32> = (0..d_out).map(|_| normal()).collect();
        // Near-ties the bf16 copy cannot tell apart: column 7 is column 3 plus a nudge in one
        // weight far below bf16's resolution, and column 11 equals column 3.
        for row in weight.chunks_exact_mut(d_out) {
            (row[7], row[11]) = (row[3], row[3]);
        }
        let mut bias = bias;
        (bias[7], bias[11]) = (bias[3], bias[3]);
        weight[7] += 1e-4;
        let head = ArgmaxHead::new(weight.clone(), bias.clone());
        let mut trials_won_by_the_tie = 0;
        with_team(|team| {
            for trial in 0..200 {
                let mut x: Vec<f32> = (0..d_in).map(|_| normal() * 4.0).collect();
                if trial % 2 == 0 {
                    // Aim at the tied columns: x along column 3.
                    for (x, row) in x.iter_mut().zip(weight.chunks_exact(d_out)) {
                        *x = row[3] * 40.0;
                    }
                    x[0] = x[0].abs().max(1.0);
                }
                let logits = head.logits(team, &x);
                let want = crate::argmax(&logits);
                trials_won_by_the_tie += usize::from(want == 7);
                assert_eq!(head.argmax(team, &x), want, "trial {trial}");
            }
        });
        assert!(trials_won_by_the_tie > 50, "the test must exercise the near-tie");
    }

    #[test]
    fn argmax_head_falls_back_to_all_logits_past_its_recheck_limit() {
        // Equal columns and biases a few f32 ulps apart: every column is a close call.
        let (d_in, d_out) = (8, ArgmaxHead::MAX_RECHECKS + 100);
        let weight: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i / d_out) as f32 - 3.5) * 0.1)
            .collect();
        let bias: Vec<f32> = (0..d_out).map(|j| 1.0 + j as f32 * 1.2e-7).collect();
        let head = ArgmaxHead::new(weight, bias);
        let x = [1.0, -2.0, 0.5, 3.0, 0.25, -1.0, 2.0, 0.75];
        with_team(|team| {
            let want = crate::argmax(&head.logits(team, &x));
            assert_eq!(want, d_out - 1, "the largest bias wins in f32");
            assert_eq!(head.argmax(team, &x), want);
        });
    }
}
