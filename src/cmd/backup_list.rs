//! `backup-list`: backups and the recoverable window.

use super::Env;
use crate::exit;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    output: super::Output,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        crate::backup::catalog::run(store.as_ref(), &codec, self.output.json).await?;
        Ok(exit::OK)
    }
}
