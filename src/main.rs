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
    /// Evaluate bundles on the time-split test set: Table 1, tiers, calibration, eCPS.
    #[cfg(feature = "train")]
    Eval(podscore::eval::EvalArgs),
    /// Simulate, train every variant, evaluate: the paper's tables in one command.
    #[cfg(feature = "train")]
    Reproduce(podscore::eval::ReproduceArgs),
    /// Serve the bundles over HTTP.
    Serve(podscore::serve::ServeArgs),
    /// Score one request offline, without a server.
    Score(podscore::serve::ScoreArgs),
}

fn main() {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Simulate(args) => podscore::world::run(&args),
        #[cfg(feature = "train")]
        Command::Train(args) => podscore::train::run(&args),
        #[cfg(feature = "train")]
        Command::Eval(args) => podscore::eval::run(&args),
        #[cfg(feature = "train")]
        Command::Reproduce(args) => podscore::eval::reproduce(&args),
        Command::Serve(args) => podscore::serve::run(&args),
        Command::Score(args) => podscore::serve::score(&args),
    };
    if let Err(error) = outcome {
        // One line: the cause chain joined, as the README promises.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
