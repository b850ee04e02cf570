//! TODO

#[derive(clap::Args)]
pub struct ServeArgs {}

#[derive(clap::Args)]
pub struct ScoreArgs {}

pub fn run(_args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn score(_args: &ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
