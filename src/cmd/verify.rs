//! `verify`: every object the backups need, present and intact.

use super::Env;
use crate::backup::verify::{self, Options};
use anyhow::Result;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
For each backup (or --backup ID): every tar part, the file list, backup_label,
tablespace_map and every WAL segment from its start to its stop. Without the private
key the stored bytes are checked against their recorded sha256 (works on the database
host); with encryption.identity_file, or in an unencrypted repository, everything is
also decoded and the sha256 of every file inside the parts is checked. --wal adds
every WAL object in the repository.

Exit status: 0 all intact; 1 a problem, each object named.")]
pub struct Args {
    /// Only this backup
    #[arg(long)]
    backup: Option<String>,
    /// Also check every WAL object in the repository
    #[arg(long)]
    wal: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (codec, store) = env.open().await?;
        let opts = Options {
            backup: self.backup,
            all_wal: self.wal,
            concurrency: env.cfg.verify.concurrency as usize,
        };
        Ok(super::passed(verify::run(store, &codec, opts).await?))
    }
}
