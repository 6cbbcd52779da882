//! `gaze`: fine-tune Vision Transformers and show where transformers look.
//!
//! A thin binary: each subcommand parses its arguments and calls the libraries.

mod allocator;
mod caption;
mod classify;
mod compare;
mod data;
mod figures;
mod outputs;
mod progress;
mod synth;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Vision Transformers in Rust: timm weights, predictions, evaluation, and figures of where
/// the model looks.
#[derive(Parser)]
#[command(name = "gaze", version = version(), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Refuse images of more pixels (width x height) than this, checked from the file's
    /// header before decoding.
    #[arg(long, global = true, value_name = "PIXELS", default_value_t = gaze_data::decode::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

#[derive(Subcommand)]
enum Command {
    Predict(classify::PredictArgs),
    Eval(classify::EvalArgs),
    Posembed(figures::PosembedArgs),
    Attention(figures::AttentionArgs),
    Train(train::TrainArgs),
    Synth(synth::SynthArgs),
    Compare(compare::CompareArgs),
    Caption(caption::CaptionArgs),
    CaptionTrain(train::CaptionTrainArgs),
    Data(data::DataArgs),
}

/// The version and the backends compiled into this binary (cargo features), e.g.
/// `0.1.0 (backends: wgpu, flex)`.
fn version() -> &'static str {
    let backends: Vec<&str> = gaze_nn::available_devices()
        .into_iter()
        .filter(|d| *d != "tch-cuda")
        .collect();
    let text = format!(
        "{} (backends: {})",
        env!("CARGO_PKG_VERSION"),
        backends.join(", ")
    );
    Box::leak(text.into_boxed_str())
}

fn main() -> ExitCode {
    // SAFETY: the first thing the program does, before any thread starts.
    unsafe { gaze_nn::device::quiet_vulkan_loader() };
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    gaze_data::decode::set_max_pixels(cli.max_pixels);
    let result = match cli.command {
        Command::Predict(args) => classify::predict(args),
        Command::Eval(args) => classify::eval(args),
        Command::Posembed(args) => figures::posembed(args),
        Command::Attention(args) => figures::attention(args),
        Command::Train(args) => train::run_train(args),
        Command::Synth(args) => synth::run_synth(args),
        Command::Compare(args) => compare::run_compare(args),
        Command::Caption(args) => caption::caption(args),
        Command::CaptionTrain(args) => train::run_caption_train(args),
        Command::Data(args) => data::run_data(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
