//! TODO

#[derive(clap::Args)]
pub struct TrainArgs {}

pub fn run(_args: &TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
