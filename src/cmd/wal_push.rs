//! `wal-push %p`: PostgreSQL's archive_command.

use super::Env;
use crate::codec::Codec;
use crate::exit;
use crate::wal::{backlog, push};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
postgresql.conf:
    archive_mode = on
    archive_command = '/usr/local/bin/walvault wal-push %p'
    archive_timeout = 60

Compresses (zstd), encrypts (age, when encryption.recipients is set) and checksums
(sha256) the file, then stores it as wal/<name>. Checks first that the file is a WAL
segment of this cluster (page magic, page address matching the name, segment size,
system identifier matching the repository). Also archives .history, .partial and
.backup files.

Exit status: 0 once the file is durably stored, or when it is already archived with
identical content; 1 otherwise (PostgreSQL keeps the file and retries), including a
file already archived with different content, which is never overwritten.")]
pub struct Args {
    /// Path of the file, as PostgreSQL's %p gives it (relative to the data directory)
    path: PathBuf,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let cfg = &env.cfg;
        let path = &self.path;
        // Pushed ahead by an earlier call: neither key nor repository needed.
        if push::archived_ahead(path, &cfg.repo)? {
            return Ok(exit::OK);
        }
        let codec = Codec::from_config(cfg)?;
        let opts = push::Options {
            lookahead: cfg.push.lookahead as usize,
            concurrency: cfg.push.concurrency as usize,
            repo: cfg.repo.clone(),
        };
        // Encoding starts before the repository is opened (see push::prepare).
        let prepared = push::prepare(&codec, path, &opts)?;
        let pushed = async {
            let store = cfg.open_store().await?;
            push::run(store.as_ref(), &codec, prepared, &opts).await?;
            anyhow::Ok(store)
        }
        .await;
        match pushed {
            Ok(store) => {
                backlog::record_journaled(store.as_ref(), path).await;
                Ok(exit::OK)
            }
            Err(e) if backlog::drop_if_over(cfg.push.max_backlog, path, &e)? => Ok(exit::OK),
            Err(e) => Err(e),
        }
    }
}
