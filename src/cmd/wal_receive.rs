//! `wal-receive`: WAL streamed into the repository (a long-running service).

use super::Env;
use crate::exit;
use crate::wal::names::Lsn;
use crate::wal::receive::{self, Options};
use anyhow::Result;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Connects with the replication protocol (postgres.conninfo, PGHOST/PGPORT/PGUSER, or
the local socket; the role needs REPLICATION), through the physical slot receive.slot
(created when absent with receive.create_slot), checks the cluster against the
repository, and stores:
  - each completed segment as wal/<segment>, the very object wal-push stores (both
    may run: whichever comes second finds identical bytes);
  - the open segment at least every receive.flush_seconds, create-only, each flush
    what came since the one before, as stream/<segment>.<from>-<to> (offsets);
    wal-fetch chains them from the segment's start.
The server is told WAL is flushed only once the repository holds it. With
  synchronous_standby_names = 'walvault'   (the receiver's application_name)
a commit returns only once its WAL is in the repository (RPO 0; set
receive.flush_seconds = 0). Runs until SIGTERM or SIGINT (systemd:
examples/walvault-receive.service); a connection lost while streaming is retried.

Exit status: 0 when stopped; 1 when refused (another cluster's repository, a slot
that does not exist, no replication permission), with the reason.")]
pub struct Args {
    /// Stop once the repository holds WAL up to this LSN (a one-off catch-up)
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    stop_at: Option<Lsn>,
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    Lsn::parse(s).map_err(|e| e.to_string())
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let r = &env.cfg.receive;
        let opts = Options {
            conninfo: env.cfg.postgres.conninfo.clone(),
            slot: r.slot.clone(),
            create_slot: r.create_slot,
            flush_interval: Duration::from_secs(r.flush_seconds as u64),
            flush_bytes: r.flush_bytes as u64,
            stop_at: self.stop_at,
        };
        receive::run(store, &codec, &opts).await?;
        Ok(exit::OK)
    }
}
