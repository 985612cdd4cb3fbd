//! `dump-push`: logical dumps of the databases and the globals.

use super::Env;
use crate::dump::push::{self, Options};
use crate::exit;
use anyhow::Result;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each database's pg_dump --format=custom is streamed through the codec (zstd, age, sha256)
into dumps/<id>/<database>.dump, the roles and tablespaces (pg_dumpall --globals-only)
into dumps/<id>/globals.sql, and a clear manifest (server version, sizes, sha256, every
table with its row estimate) is written last. Prints the dump id. Any later PostgreSQL
restores it (dump-restore): the long keeps a physical backup cannot promise.")]
pub struct Args {
    /// A database to dump (repeatable; default: every database that accepts connections)
    #[arg(long, short = 'd', value_name = "NAME")]
    database: Vec<String>,
    /// Leave out the roles and tablespaces
    #[arg(long)]
    no_globals: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            databases: self.database,
            globals: !self.no_globals,
        };
        let id = push::run(&env.cfg, store.as_ref(), &codec, opts).await?;
        println!("{id}");
        Ok(exit::OK)
    }
}
