//! `repo-switch`: after a major upgrade, a new repository for the upgraded cluster.

use super::Env;
use crate::exit;
use crate::repo_switch::{self, Options, RepoSource};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
pg_upgrade (or a dump and restore) gives the cluster a new system identifier, and a
repository belongs to one cluster. Run this once the upgraded data directory exists and
before the upgraded cluster archives (as the config file's owner):

    walvault repo-switch --to s3://bucket/prod-main-pg18 --pgdata /var/lib/postgresql/18/main

It binds the new repository to the upgraded cluster, links the two repositories both
ways (backup-list shows the link), and sets `repo` in the config file to the new one.
The old repository is left as it was: recover from it to any time before the upgrade
(with the old major's binaries: postgres.bin_dir_N) using --set repo=OLD, and keep
running retention on it. Then take a base backup of the upgraded cluster at once.")]
pub struct Args {
    /// The new repository (a new prefix or directory), in the `repo` setting's form
    #[arg(long, value_name = "URL")]
    to: String,
    /// The upgraded cluster's data directory
    #[arg(long, env = "PGDATA")]
    pgdata: PathBuf,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (_, store) = env.open().await?;
        // The config file's repo line is replaced only when it is what names the repository.
        let repo_source = if env.sets.iter().any(|s| s.starts_with("repo=")) {
            RepoSource::Elsewhere("a --set argument".into())
        } else if std::env::var_os("WALVAULT_REPO").is_some() {
            RepoSource::Elsewhere("WALVAULT_REPO in the environment".into())
        } else if let Some(file) = env.config_file.clone() {
            RepoSource::File(file)
        } else {
            RepoSource::Elsewhere("the default (there is no config file)".into())
        };
        let opts = Options {
            to: self.to,
            pgdata: self.pgdata,
            repo_source,
        };
        repo_switch::run(&env.cfg, store.as_ref(), opts).await?;
        Ok(exit::OK)
    }
}
