//! `dump-list`: the logical dumps.

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
        let (_, store) = env.open().await?;
        crate::dump::run_list(store.as_ref(), self.json).await?;
        Ok(exit::OK)
    }
}
