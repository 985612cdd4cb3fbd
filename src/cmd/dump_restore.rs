//! `dump-restore`: a logical dump into a server of the same or a newer major.

use super::Env;
use crate::dump::restore::{self, Options};
use crate::exit;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dump id, as dump-list shows it
    id: String,
    /// The server and database to restore into (default database: the dump's name);
    /// a database that does not exist is created
    #[arg(long, value_name = "CONNINFO")]
    into: String,
    /// Which database of the dump (when it holds several)
    #[arg(long, short = 'd', value_name = "NAME")]
    database: Option<String>,
    /// Only this table, SCHEMA.NAME (repeatable, one schema)
    #[arg(long, value_name = "SCHEMA.NAME")]
    table: Vec<String>,
    /// Apply the dump's roles and tablespaces first
    #[arg(long)]
    globals: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            id: self.id,
            database: self.database,
            tables: super::restore_table::parse_tables(&self.table)?,
            into: self.into,
            globals: self.globals,
        };
        restore::run(&env.cfg, store.as_ref(), &codec, opts).await?;
        Ok(exit::OK)
    }
}
