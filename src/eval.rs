//! TODO

#[derive(clap::Args)]
pub struct EvalArgs {}

#[derive(clap::Args)]
pub struct ReproduceArgs {}

pub fn run(_args: &EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn reproduce(_args: &ReproduceArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
