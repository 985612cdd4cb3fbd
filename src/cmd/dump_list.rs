//! `dump-list`: the logical dumps.

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
        let (_, store) = env.open().await?;
        crate::dump::run_list(store.as_ref(), self.output.json).await?;
        Ok(exit::OK)
    }
}
