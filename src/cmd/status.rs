//! `status`: the archive's health, as a report, JSON or a Prometheus textfile.

use super::Env;
use crate::status::{self, Options};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Reads the repository and, when it can, PostgreSQL: the .ready files in the data
directory (--pgdata or PGDATA) or pg_ls_archive_statusdir() (needs pg_monitor), and
pg_stat_archiver. A source that cannot be read is reported as down; the rest is
still shown and written.

  walvault status
  walvault status --json
  walvault status --prometheus /var/lib/prometheus/node-exporter/walvault.prom

--prometheus writes a node_exporter textfile atomically (cron every minute); the
alert rules in examples/prometheus/ use its metrics.

Exit status: 0 both sources read; 1 the repository or PostgreSQL could not be read.")]
pub struct Args {
    /// The data directory, for the archive backlog (.ready files)
    #[arg(long, env = "PGDATA")]
    pgdata: Option<PathBuf>,
    #[command(flatten)]
    output: super::Output,
    /// Write a node_exporter textfile (atomically) instead of the report
    #[arg(long, value_name = "FILE")]
    prometheus: Option<PathBuf>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            pgdata: self.pgdata,
            json: self.output.json,
            prometheus: self.prometheus,
        };
        Ok(super::passed(
            status::run(&env.cfg, store.as_ref(), &codec, opts).await?,
        ))
    }
}
