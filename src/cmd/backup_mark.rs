//! `backup-mark`: a backup's or a dump's keep mark (the id says which).

use super::Env;
use crate::exit;
use crate::marks::{self, Mark};
use anyhow::Result;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  walvault backup-mark 20261122T020000Z --permanent --note 'year-end audit 2026'
  walvault backup-mark 20261122T020000Z --keep-until 2033-12-31
  walvault backup-mark 20261122T020000Z --unmark

A marked backup keeps its WAL from start to stop, so it stays restorable on its own.
On S3 the backup's objects and that WAL are tagged walvault-class=permanent
(--keep-until: kept; --unmark: standard): the bucket's lifecycle rules (terraform/)
move permanent objects to colder storage and keep them 7 years.")]
pub struct Args {
    /// Backup id, as backup-list shows it
    id: String,
    /// Never removed by any retention policy
    #[arg(long, conflicts_with_all = ["keep_until", "unmark"])]
    permanent: bool,
    /// Not removed before this date (YYYY-MM-DD, UTC)
    #[arg(long, value_name = "DATE", conflicts_with = "unmark")]
    keep_until: Option<String>,
    /// Remove the mark: retention policies apply again
    #[arg(long)]
    unmark: bool,
    /// Why it is kept (shown by delete and backup-list)
    #[arg(long)]
    note: Option<String>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (_, store) = env.open().await?;
        let mark = match (self.permanent, self.keep_until, self.unmark) {
            (true, _, _) => Mark::Permanent,
            (_, Some(d), _) => Mark::Until(marks::parse_date(&d)?),
            (_, _, true) => Mark::Unmark,
            _ => anyhow::bail!("say --permanent, --keep-until DATE or --unmark"),
        };
        // A dump's id names it as one.
        if self.id.starts_with(crate::dump::ID_PREFIX) {
            crate::dump::keep::run(store.as_ref(), &self.id, mark, self.note).await?;
        } else {
            crate::backup::keep::run(store.as_ref(), &self.id, mark, self.note).await?;
        }
        Ok(exit::OK)
    }
}
