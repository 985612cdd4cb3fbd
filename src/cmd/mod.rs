//! One room per command: each file holds a command's clap arguments, their
//! mapping to the options of the module that does the work, and the call.
//! This file holds what every command shares: the top-level arguments, the
//! table of commands (name and what kind of process each one is), and the
//! environment a command runs in.

pub mod backup_list;
pub mod backup_mark;
pub mod backup_push;
pub mod delete;
pub mod drill;
pub mod dump_list;
pub mod dump_push;
pub mod dump_restore;
pub mod dump_verify;
pub mod keygen;
pub mod recover;
pub mod repo_init;
pub mod repo_switch;
pub mod restore_table;
pub mod status;
pub mod target;
pub mod verify;
pub mod wal_fetch;
pub mod wal_prefetch;
pub mod wal_push;
pub mod wal_receive;
pub mod wal_verify;

use crate::codec::Codec;
use crate::config::{self, Config};
use crate::store::Store;
use crate::{exit, logging};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

/// `--json`, for the commands that print a report.
#[derive(clap::Args, Debug)]
pub struct Output {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

const SETUP: &str = "\
Set up PostgreSQL (postgresql.conf), as the postgres user can run walvault:
    wal_level = replica
    archive_mode = on
    archive_command = '/usr/local/bin/walvault wal-push %p'
    archive_timeout = 60                 # RPO: a segment at least every minute
    restore_command = '/usr/local/bin/walvault wal-fetch %f %p'   # used in recovery only

Settings come from /etc/walvault/walvault.toml (or --config FILE, or WALVAULT_CONFIG),
each overridable by WALVAULT_<KEY> (WALVAULT_REPO, WALVAULT_COMPRESSION_LEVEL, ...).
S3 endpoint, region and credentials come from the standard AWS chain
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, roles).
The repository is file:///var/lib/walvault/repo unless `repo` says otherwise.";

#[derive(Parser, Debug)]
#[command(
    name = "walvault",
    version,
    about = "Keeps a PostgreSQL cluster recoverable to any point in time",
    after_help = SETUP
)]
pub struct Cli {
    /// Configuration file (default /etc/walvault/walvault.toml; may be absent)
    #[arg(long, global = true, env = "WALVAULT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A setting, over the config file and the environment (repeatable; never a secret:
    /// command lines are visible to every user of the host)
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Archive one WAL file: archive_command = 'walvault wal-push %p'
    WalPush(wal_push::Args),
    /// Restore one WAL file: restore_command = 'walvault wal-fetch %f %p'
    WalFetch(wal_fetch::Args),
    /// Stream WAL into the repository (a service): an RPO of seconds, zero with synchronous replication
    WalReceive(wal_receive::Args),
    /// Download WAL segments ahead into the prefetch spool (wal-fetch starts it), or --clean it
    WalPrefetch(wal_prefetch::Args),
    /// Create an age identity file (mode 0600) and print its public recipient
    Keygen(keygen::Args),
    /// Take an online base backup (nightly cron)
    BackupPush(backup_push::Args),
    /// List complete backups and the recoverable window
    BackupList(backup_list::Args),
    /// Restore a backup into an empty directory and set up recovery to a target
    Recover(recover::Args),
    /// Keep a backup whatever the retention policy (audit keeps), or unmark it
    BackupMark(backup_mark::Args),
    /// Apply retention: remove backups the policy does not keep and WAL no kept backup needs
    Delete(delete::Args),
    /// Find WAL gaps and timeline breaks since each backup
    WalVerify(wal_verify::Args),
    /// Check that every object backups need is present and intact
    Verify(verify::Args),
    /// Archive health: last archived WAL, backlog (the live RPO), last backup, window
    Status(status::Args),
    /// Prove a restore: restore into a scratch cluster, check, measure RTO/RPO, report
    Drill(drill::Args),
    /// Bring tables back as they were at a point in time, beside or in place of the live ones
    RestoreTable(restore_table::Args),
    /// Logical dumps: pg_dump of each database (and the globals) into the repository
    DumpPush(dump_push::Args),
    /// List the logical dumps
    DumpList(dump_list::Args),
    /// Restore a logical dump (a whole database, or tables) into a server of the same or a newer major
    DumpRestore(dump_restore::Args),
    /// Check logical dumps: stored bytes without the key, the archive's table of contents with it
    DumpVerify(dump_verify::Args),
    /// Bind the repository to a cluster (done by the first wal-push otherwise)
    RepoInit(repo_init::Args),
    /// After a major upgrade: bind a new repository to the upgraded cluster and switch to it
    RepoSwitch(repo_switch::Args),
}

/// What kind of process a command is: what its failure exits with, what a
/// closed pipe does to it, and how it allocates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// PostgreSQL's archive_command (and the prefetcher it starts): writes
    /// nothing to stdout.
    ArchiveCall,
    /// PostgreSQL's restore_command: a failure that is not "absent" exits
    /// FETCH_FATAL, and so does a panic on any thread (see exit.rs).
    RestoreCall,
    /// A person's or cron's command: piped into a pager that quits early, it
    /// ends quietly, as other tools do.
    Report,
    /// Feeds pg_restore or psql through pipes: one that exits early is an
    /// error with its own words, not a silent death by SIGPIPE.
    Piped,
    /// Reads a backup's parts on many threads (few malloc arenas, see main.rs).
    Parallel,
    /// Both of the above (restore-table).
    PipedParallel,
}

impl Command {
    /// The command's name as typed, and its kind: the table of commands.
    pub fn spec(&self) -> (&'static str, Kind) {
        use Kind::*;
        match self {
            Command::WalPush(_) => ("wal-push", ArchiveCall),
            Command::WalFetch(_) => ("wal-fetch", RestoreCall),
            Command::WalPrefetch(_) => ("wal-prefetch", ArchiveCall),
            Command::WalReceive(_) => ("wal-receive", Report),
            Command::Keygen(_) => ("keygen", Report),
            Command::BackupPush(_) => ("backup-push", Parallel),
            Command::BackupList(_) => ("backup-list", Report),
            Command::Recover(_) => ("recover", Parallel),
            Command::BackupMark(_) => ("backup-mark", Report),
            Command::Delete(_) => ("delete", Report),
            Command::WalVerify(_) => ("wal-verify", Report),
            Command::Verify(_) => ("verify", Parallel),
            Command::Status(_) => ("status", Report),
            Command::Drill(_) => ("drill", Parallel),
            Command::RestoreTable(_) => ("restore-table", PipedParallel),
            Command::DumpPush(_) => ("dump-push", Report),
            Command::DumpList(_) => ("dump-list", Report),
            Command::DumpRestore(_) => ("dump-restore", Piped),
            Command::DumpVerify(_) => ("dump-verify", Piped),
            Command::RepoInit(_) => ("repo-init", Report),
            Command::RepoSwitch(_) => ("repo-switch", Report),
        }
    }

    /// Loads the configuration (keygen needs none), starts the runtime and
    /// runs the command; the exit status on success.
    pub fn execute(self, config: Option<PathBuf>, sets: Vec<String>) -> Result<u8> {
        let command = match self {
            Command::Keygen(a) => return a.run(),
            c => c,
        };
        let cfg = Config::load_from_process(config.as_deref(), &sets)?;
        logging::init(&cfg.log_level);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // restore_command written by recover names the config file in use.
        let config_file = config.or_else(|| {
            let p = PathBuf::from(config::DEFAULT_CONFIG_PATH);
            p.exists().then_some(p)
        });
        let env = Env {
            cfg,
            config_file,
            sets,
        };
        rt.block_on(command.run(&env))
    }

    async fn run(self, env: &Env) -> Result<u8> {
        match self {
            Command::WalPush(a) => a.run(env).await,
            Command::WalFetch(a) => a.run(env).await,
            Command::WalPrefetch(a) => a.run(env).await,
            Command::WalReceive(a) => a.run(env).await,
            Command::Keygen(a) => a.run(),
            Command::BackupPush(a) => a.run(env).await,
            Command::BackupList(a) => a.run(env).await,
            Command::Recover(a) => a.run(env).await,
            Command::BackupMark(a) => a.run(env).await,
            Command::Delete(a) => a.run(env).await,
            Command::WalVerify(a) => a.run(env).await,
            Command::Verify(a) => a.run(env).await,
            Command::Status(a) => a.run(env).await,
            Command::Drill(a) => a.run(env).await,
            Command::RestoreTable(a) => a.run(env).await,
            Command::DumpPush(a) => a.run(env).await,
            Command::DumpList(a) => a.run(env).await,
            Command::DumpRestore(a) => a.run(env).await,
            Command::DumpVerify(a) => a.run(env).await,
            Command::RepoInit(a) => a.run(env).await,
            Command::RepoSwitch(a) => a.run(env).await,
        }
    }
}

/// What a command runs with: the configuration, and what commands that start
/// other walvault processes pass on to them.
pub struct Env {
    pub cfg: Config,
    /// The config file in use (restore_command and the prefetcher name it).
    pub config_file: Option<PathBuf>,
    /// `--set` arguments of this run.
    pub sets: Vec<String>,
}

impl Env {
    /// The codec first (a bad key file is named before the repository is
    /// reached), then the repository.
    pub async fn open(&self) -> Result<(Codec, Arc<dyn Store>)> {
        let codec = Codec::from_config(&self.cfg)?;
        let store = self.cfg.open_store().await?;
        Ok((codec, store))
    }

    /// The settings a later walvault process needs to find the same repository.
    pub fn carried(&self) -> Result<Vec<String>> {
        config::carried_settings(&self.sets)
    }

    /// What a scratch cluster (drill, restore-table) is recovered to, its
    /// restore_command finding this process's repository.
    pub fn source(
        &self,
        target: target::TargetArgs,
        backup: Option<String>,
    ) -> Result<crate::scratch::Source> {
        let (target, timeline) = target.parse()?;
        Ok(crate::scratch::Source {
            target,
            timeline,
            backup,
            config_file: self.config_file.clone(),
            carry: self.carried()?,
        })
    }
}

/// A check's result as its exit status: 0 when it passed, 1 otherwise.
pub fn passed(ok: bool) -> u8 {
    if ok {
        exit::OK
    } else {
        exit::FAILURE
    }
}
