//! `wal-fetch %f %p`: PostgreSQL's restore_command.

use super::Env;
use crate::exit;
use crate::wal::fetch::{self, Fatal, Fetched, Prefetch};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
postgresql.conf (or what `walvault recover` writes):
    restore_command = '/usr/local/bin/walvault wal-fetch %f %p'

Downloads wal/<name>, verifies its checksums, decrypts (encryption.identity_file) and
decompresses it, checks a segment's header against its name and the cluster (the
data directory's pg_control when %p lies in a pg_wal, else the repository's identity),
and writes it to the destination atomically (temporary file in the same directory,
rename; no fsync, as PostgreSQL makes durable every restored file it keeps).

Exit status: 0 restored; 1 the file is not in the archive (normal: PostgreSQL asks
for files that do not exist; logged at info level, at debug level on a standby, which
asks every few seconds for what is not archived yet); 128 the file could not be restored although it may
exist (store unreachable after retries, damaged object, missing or wrong key). 128
makes PostgreSQL stop recovery with an error instead of ending it early.")]
pub struct Args {
    /// WAL file name (%f)
    name: String,
    /// Where to write it (%p)
    dest: PathBuf,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let cfg = &env.cfg;
        let prefetch = Prefetch {
            ahead: cfg.fetch.prefetch as usize,
            spool_dir: cfg.fetch.spool_dir.clone(),
            config_file: env.config_file.clone(),
            sets: env.sets.clone(),
        };
        // Served from the prefetch spool: neither key nor repository needed.
        if fetch::from_spool(&self.name, &self.dest, &prefetch) {
            return Ok(exit::OK);
        }
        let (codec, store) = env.open().await?;
        let retries = cfg.fetch.retries as u32;
        match fetch::run(
            store.as_ref(),
            &codec,
            &self.name,
            &self.dest,
            retries,
            &prefetch,
        )
        .await
        {
            Ok(Fetched::Restored) => Ok(exit::OK),
            Ok(Fetched::Absent) => Ok(exit::FAILURE),
            Err(Fatal(e)) => Err(e),
        }
    }
}
