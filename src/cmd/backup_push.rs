//! `backup-push`: an online base backup.

use super::Env;
use crate::backup::push::{self, Options};
use crate::exit;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Connects like psql (PGHOST, PGPORT, PGUSER, PGPASSWORD, or postgres.conninfo), runs
pg_backup_start, reads the data directory itself (same exclusions as pg_basebackup,
tablespaces included), stores it as compressed, encrypted tar parts uploaded in parallel,
then pg_backup_stop, waiting until the WAL the backup needs is archived. The manifest
is written last: a backup that did not finish is never listed.

On a streaming standby the backup runs there (its reads stay off the primary): refused
when the standby does not stream or replays more than backup.standby_max_lag_mb behind;
its last segment reaches the repository when the primary leaves it (archive_timeout
there). backup-list shows the host and role each backup was taken on.")]
pub struct Args {
    /// The data directory (default: PGDATA, else asked from the server)
    #[arg(long, env = "PGDATA")]
    pgdata: Option<PathBuf>,
    /// Immediate checkpoint instead of a spread one (faster start, more I/O at once)
    #[arg(long)]
    fast: bool,
    /// Backup label (default: walvault <id>)
    #[arg(long)]
    label: Option<String>,
    /// A full backup, whatever backup.incremental says
    #[arg(long, conflicts_with = "incremental")]
    full: bool,
    /// Only what changed since the newest backup it can build on (a full one
    /// when there is none, or when backup.full_every_days / backup.max_increments ask for it)
    #[arg(long)]
    incremental: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            pgdata: self.pgdata,
            fast: self.fast,
            label: self.label,
            // None: backup.incremental decides.
            incremental: match (self.full, self.incremental) {
                (true, _) => Some(false),
                (_, true) => Some(true),
                _ => None,
            },
        };
        let m = push::run(&env.cfg, store, &codec, opts).await?;
        println!("{}", m.id);
        Ok(exit::OK)
    }
}
