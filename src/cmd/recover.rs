//! `recover`: a backup restored and recovered to a target, or made a standby.

use super::target::TargetArgs;
use super::Env;
use crate::exit;
use crate::recover::{self, target::Action, Options, Standby};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  walvault recover --pgdata /srv/restore --target-time '2026-11-22 14:32:00+01' --start --port 5433
  walvault recover --pgdata /srv/restore --target latest --dry-run
  walvault recover --pgdata /var/lib/postgresql/15/main --standby \
      --primary-conninfo 'host=db1 user=replicator' --start     # a new replica from the archive

Chooses the newest complete backup that ended before the target (or --backup), checks
that every WAL segment needed is in the repository, restores and verifies every file,
writes recovery.signal and the recovery settings (restore_command calling this binary),
and with --start runs PostgreSQL until the target and prints where it ended.
The restored cluster does not archive (archive_mode = off) unless --archive: a copy
must not push a new timeline into the production repository.

--standby makes a standby instead (standby.signal, no target): it replays the archive
without end, streams from the primary when given one (--primary-conninfo,
--primary-slot-name, or the standby.* settings), keeps production's archive settings,
and with --start is waited for until consistent.")]
pub struct Args {
    /// Directory to restore into (must be empty or absent)
    #[arg(long, short = 'D')]
    pgdata: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    /// What the server does at the target: promote (default), pause or shutdown
    #[arg(long, default_value = "promote")]
    target_action: String,
    /// Stop just before the target instead of just after it
    #[arg(long)]
    exclusive: bool,
    /// Use this backup instead of choosing one
    #[arg(long)]
    backup: Option<String>,
    /// Empty a non-empty target directory first
    #[arg(long, conflicts_with = "delta")]
    overwrite: bool,
    /// Restore over a copy of the same cluster (a lagging replica, a failed
    /// primary, an earlier restore): only files whose size or sha256 differ
    /// are written, files the backup lacks are removed
    #[arg(long)]
    delta: bool,
    /// Print the plan and check the repository; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Start PostgreSQL and wait until recovery reaches the target
    #[arg(long)]
    start: bool,
    /// Port for the restored server (restore beside a running cluster)
    #[arg(long)]
    port: Option<u16>,
    /// Unix socket directory for the restored server
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// Restore tablespace OID into DIR instead of its original place (repeatable)
    #[arg(long, value_name = "OID=DIR")]
    tablespace_map: Vec<String>,
    /// Keep archiving on in the restored cluster (it becomes the primary)
    #[arg(long)]
    archive: bool,
    /// Make a standby (standby.signal): it replays the archive without end and
    /// streams from its primary when given one; production's archive settings kept
    #[arg(long)]
    standby: bool,
    /// primary_conninfo of the standby (default standby.primary_conninfo; a
    /// password belongs in the config file or ~/.pgpass, not on a command line)
    #[arg(long, requires = "standby", value_name = "CONNINFO")]
    primary_conninfo: Option<String>,
    /// primary_slot_name of the standby (default standby.primary_slot_name)
    #[arg(long, requires = "standby", value_name = "SLOT")]
    primary_slot_name: Option<String>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let cfg = &env.cfg;
        let (codec, store) = env.open().await?;
        let (target, timeline) = self.target.parse()?;
        let mut tablespace_map = BTreeMap::new();
        for m in self.tablespace_map {
            let (oid, dir) = m
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--tablespace-map '{m}': use OID=DIR"))?;
            tablespace_map.insert(oid.to_string(), PathBuf::from(dir));
        }
        let opts = Options {
            pgdata: self.pgdata,
            target,
            timeline,
            action: Action::parse(&self.target_action)?,
            exclusive: self.exclusive,
            backup: self.backup,
            overwrite: self.overwrite,
            delta: self.delta,
            dry_run: self.dry_run,
            start: self.start,
            port: self.port,
            socket_dir: self.socket_dir,
            tablespace_map,
            tablespace_root: None,
            archive: self.archive,
            config_file: env.config_file.clone(),
            carry: env.carried()?,
            postgres: cfg.postgres.clone(),
            standby: self.standby.then(|| Standby {
                primary_conninfo: self
                    .primary_conninfo
                    .or(cfg.standby.primary_conninfo.clone()),
                primary_slot_name: self
                    .primary_slot_name
                    .or(cfg.standby.primary_slot_name.clone()),
            }),
        };
        recover::run(cfg, store, &codec, opts).await?;
        Ok(exit::OK)
    }
}
