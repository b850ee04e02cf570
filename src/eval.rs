//! TODO: the offline evaluation.

#[derive(clap::Args, Debug)]
pub struct EvalArgs {}
#[derive(clap::Args, Debug)]
pub struct ReproduceArgs {}

pub fn run(_args: &EvalArgs) -> anyhow::Result<()> {
    anyhow::bail!("eval is not built yet")
}
pub fn reproduce(_args: &ReproduceArgs) -> anyhow::Result<()> {
    anyhow::bail!("reproduce is not built yet")
}
