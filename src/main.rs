//! The `podscore` binary: parses flags and hands each subcommand to its module.

use clap::{Parser, Subcommand};

/// candle allocates a fresh buffer for every tensor op; glibc returns the large ones to
/// the OS and faults them back in on the next training step. mimalloc keeps them: 22%
/// more training rows per second on the 2-core machine (tests/benches/train_step.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "podscore",
    version,
    about = "Multi-task scoring of podcast ads and promotions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic world: impression logs and a feature snapshot (Parquet).
    Simulate(podscore::world::SimulateArgs),
    /// Train a model on a world's logs and export a bundle (ONNX + manifest).
    #[cfg(feature = "train")]
    Train(podscore::train::TrainArgs),
    /// Add a new objective to a trained bundle from a few labels: a head filling a new
    /// response field.
    #[cfg(feature = "train")]
    Finetune(podscore::train::finetune::FinetuneArgs),
    /// Evaluate bundles on the time-split test set: Table 1, tiers, calibration, eCPS.
    #[cfg(feature = "train")]
    Eval(podscore::eval::EvalArgs),
    /// Simulate, train every variant, evaluate: the paper's tables in one command.
    #[cfg(feature = "train")]
    Reproduce(podscore::eval::ReproduceArgs),
    /// Learning curves of new objectives fine-tuned on trained bundles (the experiment
    /// of `reproduce`, alone).
    #[cfg(feature = "train")]
    Curves(podscore::eval::curves::CurvesArgs),
    /// Serve the bundles over HTTP.
    Serve(podscore::serve::ServeArgs),
    /// Score one request offline, without a server.
    Score(podscore::serve::ScoreArgs),
    /// Ask the server on this host whether it is ready (a container's HEALTHCHECK).
    Healthcheck(podscore::healthcheck::HealthcheckArgs),
    /// Feature store tools: `features load` writes a snapshot into Redis in Feast's layout.
    Features(podscore::store::load::FeaturesArgs),
    /// Write a bundle again in this version's graph, from the weights in its model.onnx.
    Reexport(podscore::reexport::ReexportArgs),
}

/// candle's CPU pool spins at its barriers, and the trainer runs a batch-preparation
/// thread beside it: on a 2-core machine two compute threads train 7x slower than one
/// (tests/benches/train_step.rs). The pool reads `CANDLE_NUM_THREADS` once, and setting
/// a variable in a running process is `unsafe`, so training commands re-execute
/// themselves with it set unless the caller chose a value.
#[cfg(feature = "train")]
fn rerun_with_one_candle_thread() -> Option<i32> {
    const VARIABLE: &str = "CANDLE_NUM_THREADS";
    if std::env::var_os(VARIABLE).is_some() {
        return None;
    }
    let executable = std::env::current_exe().ok()?;
    let status = std::process::Command::new(executable)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, "1")
        .status()
        .ok()?;
    Some(status.code().unwrap_or(1))
}

fn main() {
    let cli = Cli::parse();
    #[cfg(feature = "train")]
    if matches!(
        cli.command,
        Command::Train(_) | Command::Finetune(_) | Command::Reproduce(_) | Command::Curves(_)
    ) && let Some(code) = rerun_with_one_candle_thread()
    {
        std::process::exit(code);
    }
    let outcome = match cli.command {
        Command::Simulate(args) => podscore::world::run(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => podscore::train::run(&args),
        #[cfg(feature = "train")]
        Command::Finetune(args) => podscore::train::finetune::run(&args),
        #[cfg(feature = "train")]
        Command::Eval(args) => podscore::eval::run(&args),
        #[cfg(feature = "train")]
        Command::Reproduce(args) => podscore::eval::reproduce(&args),
        #[cfg(feature = "train")]
        Command::Curves(args) => podscore::eval::curves::command(&args),
        Command::Serve(args) => podscore::serve::run(&args),
        Command::Score(args) => podscore::serve::score(&args),
        Command::Healthcheck(args) => podscore::healthcheck::run(&args),
        Command::Features(args) => podscore::store::load::run(&args),
        Command::Reexport(args) => podscore::reexport::run(&args),
    };
    if let Err(error) = outcome {
        // One line: the cause chain joined, as the README promises.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
