//! `restore-table`: tables as they were at a point in time, from a scratch cluster.

use super::target::TargetArgs;
use super::Env;
use crate::exit;
use crate::table::{self, names, Destination, Options, Selection};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Restores the backup into a scratch cluster (as a drill does: private socket, nothing acting
outward, removed on any exit), recovers it to the target, and takes the tables from there
with their indexes, constraints, sequences' values and grants. Destinations:
  (default)      beside the live table as NAME_restored_YYYYMMDD_HHMMSS, or --as NEW_NAME
  --replace      in place of the live table: DROP and load in one transaction; refused when
                 views or other tables' foreign keys depend on it, unless --cascade
  --to-file F    a custom-format dump (pg_restore -d DB F loads it)
The destination is postgres.conninfo (or PGHOST...) with --database, or --into CONNINFO.
Names taken, unknown tables and targets outside the window are refused before anything is
written. Example, the orders as they were before a bad DELETE at 14:05:
    walvault restore-table --database shop --table public.orders \\
        --target-time '2026-12-03 14:04:59+00' --as orders_before_delete")]
pub struct Args {
    /// A table to restore, SCHEMA.NAME (public when no schema; repeatable)
    #[arg(
        long,
        value_name = "SCHEMA.NAME",
        required_unless_present = "schema",
        conflicts_with = "schema"
    )]
    table: Vec<String>,
    /// Every table of this schema (restored beside as a new schema)
    #[arg(long, value_name = "SCHEMA")]
    schema: Option<String>,
    /// The database the tables are in
    #[arg(long, short = 'd', value_name = "NAME")]
    database: String,
    #[command(flatten)]
    target: TargetArgs,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    exclusive: bool,
    /// Use this backup instead of choosing one
    #[arg(long)]
    backup: Option<String>,
    /// The server to load into (default: postgres.conninfo with --database)
    #[arg(long, value_name = "CONNINFO", conflicts_with = "to_file")]
    into: Option<String>,
    /// The restored table's name (or schema's, with --schema) beside the live one
    #[arg(long = "as", value_name = "NEW_NAME", conflicts_with_all = ["replace", "to_file"])]
    as_name: Option<String>,
    /// Replace the live tables, in one transaction
    #[arg(long, conflicts_with = "to_file")]
    replace: bool,
    /// With --replace: also drop the views and foreign keys that depend on the tables
    #[arg(long, requires = "replace")]
    cascade: bool,
    /// Write a custom-format dump file instead of loading
    #[arg(long, value_name = "FILE")]
    to_file: Option<PathBuf>,
    /// Where to make the scratch directory (default drill.scratch_dir)
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let selection = match self.schema {
            Some(s) => Selection::Schema(names::parse_identifier(&s, "--schema")?),
            None => Selection::Tables(parse_tables(&self.table)?),
        };
        let destination = match (self.to_file, self.replace) {
            (Some(f), _) => Destination::File(f),
            (None, true) => Destination::Replace {
                into: self.into,
                cascade: self.cascade,
            },
            (None, false) => Destination::Beside {
                into: self.into,
                rename: self
                    .as_name
                    .map(|n| names::parse_identifier(&n, "--as"))
                    .transpose()?,
            },
        };
        let opts = Options {
            selection,
            database: self.database,
            destination,
            source: env.source(self.target, self.backup)?,
            exclusive: self.exclusive,
            scratch_root: self
                .scratch_dir
                .unwrap_or_else(|| env.cfg.drill.scratch_dir.clone()),
        };
        table::run(&env.cfg, store, &codec, opts).await?;
        Ok(exit::OK)
    }
}

/// `--table` arguments, each SCHEMA.NAME as typed (also dump-restore's).
pub fn parse_tables(tables: &[String]) -> Result<Vec<names::Qualified>> {
    tables.iter().map(|t| names::parse_table(t)).collect()
}
