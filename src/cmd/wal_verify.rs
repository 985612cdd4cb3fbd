//! `wal-verify`: gaps and timeline breaks since each backup.

use super::Env;
use anyhow::Result;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
For each backup: whether its own WAL (start to stop) is present, and how far replay
from it gets along the latest timeline. Then every gap since the oldest restorable
backup, each either \"missing, probably still being pushed\" (its successors were stored
less than verify.pending_seconds ago) or LOST, and timelines without a history file.

Exit status: 0 the recoverable window is unbroken (pending gaps are warned about);
1 a segment is lost after the oldest backup, or no backup is restorable.")]
pub struct Args {
    #[command(flatten)]
    output: super::Output,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let pending = env.cfg.verify.pending_seconds;
        let ok = crate::wal_verify::run(store.as_ref(), &codec, pending, self.output.json).await?;
        Ok(super::passed(ok))
    }
}
