//! `backup-list`: backups and the recoverable window.

use super::Env;
use crate::exit;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        crate::backup::catalog::run(store.as_ref(), &codec, self.json).await?;
        Ok(exit::OK)
    }
}
