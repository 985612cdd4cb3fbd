//! `dump-verify`: the dumps' stored bytes, and with the key their table of contents.

use super::Env;
use crate::dump::verify::{self, Options};
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dump ids (default: all)
    ids: Vec<String>,
    /// Check only the stored bytes, even with the key
    #[arg(long)]
    stored_only: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            ids: self.ids,
            stored_only: self.stored_only,
        };
        Ok(super::passed(
            verify::run(&env.cfg, store.as_ref(), &codec, opts).await?,
        ))
    }
}
