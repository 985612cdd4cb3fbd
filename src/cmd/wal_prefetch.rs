//! `wal-prefetch`: the spool's filler, which wal-fetch starts; `--clean` by hand.

use super::Env;
use crate::exit;
use crate::wal::prefetch::{self, Follow, Job, Spool};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
postgresql.conf (or what `walvault recover` writes):
    recovery_end_command = '/usr/local/bin/walvault wal-prefetch --clean'

wal-fetch starts this in the background while PostgreSQL replays; by hand it is only
useful with --clean, which stops a running prefetcher and removes the spool (default
pg_wal/walvault_prefetch below the current directory, which is the data directory
when PostgreSQL runs recovery_end_command).")]
pub struct Args {
    /// The spool directory (default fetch.spool_dir, else pg_wal/walvault_prefetch)
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Timeline of the segments
    #[arg(long, required_unless_present = "clean")]
    timeline: Option<u32>,
    /// Stop a running prefetcher and remove the spool
    #[arg(long, conflicts_with = "names")]
    clean: bool,
    /// After NAMES, keep this many segments after the one wal-fetch asked
    /// for last, until replay stops asking (wal-fetch starts it so)
    #[arg(long, value_name = "N", requires = "segment_size")]
    ahead: Option<usize>,
    /// The cluster's WAL segment size in bytes (with --ahead)
    #[arg(long, value_name = "BYTES", requires = "ahead")]
    segment_size: Option<u64>,
    /// Segment names to download
    names: Vec<String>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let cfg = &env.cfg;
        let (codec, store) = env.open().await?;
        let dir = self
            .spool
            .or_else(|| cfg.fetch.spool_dir.clone())
            .unwrap_or_else(|| PathBuf::from("pg_wal").join(prefetch::DIR));
        let spool = Spool::at(dir);
        if self.clean {
            spool.clean()?;
            return Ok(exit::OK);
        }
        let job = Job {
            tli: self.timeline.expect("clap requires it without --clean"),
            names: self.names,
            concurrency: cfg.fetch.prefetch_concurrency as usize,
            follow: self
                .ahead
                .zip(self.segment_size)
                .map(|(ahead, segment_size)| Follow {
                    ahead,
                    segment_size,
                }),
        };
        prefetch::run(store.as_ref(), &codec, &spool, job).await?;
        Ok(exit::OK)
    }
}
