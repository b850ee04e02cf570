//! TODO: the serve and score commands.

#[derive(clap::Args, Debug)]
pub struct ServeArgs {}
#[derive(clap::Args, Debug)]
pub struct ScoreArgs {}

pub fn run(_args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}
pub fn score(_args: &ScoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("score is not built yet")
}
