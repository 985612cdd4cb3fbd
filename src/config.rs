//! Configuration: a TOML file plus `WALVAULT_<KEY>` environment overrides.
//!
//! Each setting is declared once ([`crate::setting::Key`]: path, type, the
//! values it accepts, description): config.rs declares most, each store
//! backend its own. [`keys`] is all of them: it drives the environment names,
//! the type and value checks (so an error names the key) and the unknown-key
//! check; the documentation test in `tests/config_docs.rs` holds
//! docs/configuration.md to it.

use crate::setting::{key, one_of, range, Key, Kind};
use crate::store::{self, Store};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::{Table, Value};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/walvault/walvault.toml";
pub const DEFAULT_REPO: &str = "file:///var/lib/walvault/repo";
/// Environment variables that are not settings.
const ENV_NOT_KEYS: &[&str] = &["WALVAULT_CONFIG"];

/// The settings config.rs owns (each store backend declares its own: [`keys`] is all of them).
pub const KEYS: &[Key] = &[
    key(
        "repo",
        Kind::Str,
        "repository URL: file:///path, s3://bucket/prefix or az://account/container/prefix",
    ),
    one_of(
        "log_level",
        &["error", "warn", "info", "debug", "trace"],
        "error, warn, info, debug or trace",
    ),
    range(
        "compression.level",
        1,
        19,
        "zstd level, 1 (fastest) to 19",
    ),
    key(
        "encryption.recipients",
        Kind::List,
        "age X25519 recipients (age1...); encryption is on when any is set",
    ),
    key(
        "encryption.identity_file",
        Kind::Str,
        "age identity file used to decrypt (wal-fetch, restore)",
    ),
    range(
        "push.lookahead",
        0,
        100_000,
        "wal-push: other .ready files one call also pushes (0 = only the file asked for)",
    ),
    range(
        "push.concurrency",
        1,
        100_000,
        "wal-push: uploads at once within one call",
    ),
    range(
        "push.max_backlog",
        0,
        100_000,
        "wal-push: when the repository fails and N or more .ready files wait, the segment is dropped from the archive and recorded as a deliberate gap (trades point-in-time recovery for the primary's disk; 0 = never, the default)",
    ),
    key(
        "receive.slot",
        Kind::Str,
        "wal-receive: the physical replication slot it streams through",
    ),
    key(
        "receive.create_slot",
        Kind::Bool,
        "wal-receive: create the slot when the server has none of that name",
    ),
    range(
        "receive.flush_seconds",
        0,
        3_600,
        "wal-receive: the longest the repository trails what was received (0 = as soon as no more WAL is at hand)",
    ),
    range(
        "receive.flush_bytes",
        0,
        1 << 30,
        "wal-receive: flush once this many bytes wait (0 = on time alone)",
    ),
    range(
        "fetch.prefetch",
        0,
        100_000,
        "wal-fetch: segments downloaded ahead into the spool (0 = no prefetch)",
    ),
    range(
        "fetch.prefetch_concurrency",
        1,
        100_000,
        "wal-fetch: downloads at once while prefetching",
    ),
    key(
        "fetch.spool_dir",
        Kind::Str,
        "wal-fetch: where prefetched segments wait (default pg_wal/walvault_prefetch)",
    ),
    range(
        "fetch.retries",
        0,
        100_000,
        "wal-fetch: whole-download retries after a failure, before giving up with exit 128",
    ),
    key(
        "postgres.conninfo",
        Kind::Str,
        "libpq connection string for backup-push (else PGHOST, PGPORT, PGUSER, ...)",
    ),
    key(
        "postgres.bin_dir",
        Kind::Str,
        "recover, drill: directory of pg_ctl and postgres for every major; {major} in it becomes the major needed",
    ),
    key(
        "postgres.bin_dir_13",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 13's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    key(
        "postgres.bin_dir_14",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 14's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    key(
        "postgres.bin_dir_15",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 15's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    key(
        "postgres.bin_dir_16",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 16's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    key(
        "postgres.bin_dir_17",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 17's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    key(
        "postgres.bin_dir_18",
        Kind::Str,
        "recover, drill: directory of PostgreSQL 18's pg_ctl and postgres (before postgres.bin_dir)",
    ),
    range(
        "backup.part_size_mb",
        1,
        100_000,
        "raw size of one backup part (a tar stream) in MiB",
    ),
    range(
        "backup.concurrency",
        1,
        100_000,
        "backup parts read, compressed and uploaded at once",
    ),
    key(
        "backup.incremental",
        Kind::Bool,
        "backup-push without --full/--incremental takes an incremental backup (only what changed since the newest backup it can build on), a full one when the policy below asks for it",
    ),
    range(
        "backup.full_every_days",
        0,
        100_000,
        "incremental backups: a full backup when the chain's full backup is older than N days (0 = no age limit)",
    ),
    range(
        "backup.max_increments",
        0,
        100_000,
        "incremental backups: a full backup after N increments on one full (0 = no limit)",
    ),
    range(
        "backup.max_rate_mb",
        0,
        100_000,
        "backup-push: most MiB per second read from the data directory (0 = no limit)",
    ),
    range(
        "backup.wal_wait_seconds",
        1,
        100_000,
        "how long backup-push waits for the backup's last WAL to reach the repository before it fails",
    ),
    range(
        "backup.standby_max_lag_mb",
        0,
        100_000,
        "backup-push on a standby: refused when its replay is more than N MiB of WAL behind its primary",
    ),
    key(
        "standby.primary_conninfo",
        Kind::Str,
        "recover --standby: the primary_conninfo the standby streams with (may hold a password: never logged, never carried into restore_command)",
    ),
    key(
        "standby.primary_slot_name",
        Kind::Str,
        "recover --standby: the replication slot on the primary the standby streams from",
    ),
    range(
        "restore.concurrency",
        1,
        100_000,
        "backup parts downloaded and extracted at once",
    ),
    range(
        "restore.max_rate_mb",
        0,
        100_000,
        "recover, drill: most MiB per second written into the data directory (0 = no limit)",
    ),
    range(
        "retention.keep_last",
        0,
        100_000,
        "delete: keep the newest N restorable backups (0 = no count policy)",
    ),
    range(
        "retention.keep_full",
        0,
        100_000,
        "delete: keep the newest N full backups and every incremental built on them (0 = no such policy)",
    ),
    range(
        "retention.keep_days",
        0,
        100_000,
        "delete: keep every backup needed to recover to any time in the last N days (0 = no age policy)",
    ),
    range(
        "retention.dump_keep_daily",
        0,
        100_000,
        "delete: keep the newest logical dump of each of the N latest days that have one (0 = no daily policy; with no dump policy at all every dump is kept)",
    ),
    range(
        "retention.dump_keep_weekly",
        0,
        100_000,
        "delete: keep the newest logical dump of each of the N latest ISO weeks that have one",
    ),
    range(
        "retention.dump_keep_monthly",
        0,
        100_000,
        "delete: keep the newest logical dump of each of the N latest months that have one",
    ),
    range(
        "verify.concurrency",
        1,
        100_000,
        "verify: objects downloaded and checked at once",
    ),
    range(
        "verify.pending_seconds",
        0,
        100_000,
        "wal-verify: a missing segment whose successors were stored more recently than this is reported as probably still being pushed, older as lost",
    ),
    range(
        "drill.rto_target_seconds",
        0,
        100_000,
        "drill: recovery time objective; a drill that takes longer to serve again fails (0 = none)",
    ),
    range(
        "drill.rpo_target_seconds",
        0,
        100_000,
        "drill: recovery point objective; a drill that finds the newest WAL older than this fails (0 = none)",
    ),
    key(
        "drill.scratch_dir",
        Kind::Str,
        "drill: where the scratch cluster is restored (needs room for the whole database)",
    ),
    key(
        "drill.report_dir",
        Kind::Str,
        "drill: where the Markdown and JSON reports are written",
    ),
    key(
        "drill.checks_file",
        Kind::Str,
        "drill: SQL file of named checks run on the restored cluster (-- check: NAME blocks)",
    ),
    key(
        "drill.upload",
        Kind::Bool,
        "drill: also store the reports in the repository under drills/",
    ),
    key(
        "drill.amcheck",
        Kind::Bool,
        "drill: run amcheck (bt_index_check, verify_heapam) on every database",
    ),
];

/// Every setting: config.rs's own, then each store backend's.
pub fn keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter()
        .chain(store::s3::Settings::KEYS)
        .chain(store::azure::Settings::KEYS)
}

/// The declaration of `name`, if it is a setting.
pub fn find(name: &str) -> Option<&'static Key> {
    keys().find(|k| k.name == name)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_repo")]
    pub repo: String,
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub encryption: Encryption,
    #[serde(default)]
    pub s3: store::s3::Settings,
    #[serde(default)]
    pub azure: store::azure::Settings,
    #[serde(default)]
    pub fetch: Fetch,
    #[serde(default)]
    pub push: Push,
    #[serde(default)]
    pub receive: Receive,
    #[serde(default)]
    pub postgres: Postgres,
    #[serde(default)]
    pub backup: Backup,
    #[serde(default)]
    pub restore: Restore,
    #[serde(default)]
    pub standby: Standby,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default)]
    pub drill: Drill,
}

// Each section's defaults are its serde defaults, written once per field.
crate::setting::default_from_serde!(
    Drill,
    Verify,
    Backup,
    Restore,
    Push,
    Receive,
    Compression,
    Fetch
);

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    #[serde(default)]
    pub rto_target_seconds: i64,
    #[serde(default)]
    pub rpo_target_seconds: i64,
    #[serde(default = "default_scratch_dir")]
    pub scratch_dir: PathBuf,
    #[serde(default = "default_report_dir")]
    pub report_dir: PathBuf,
    pub checks_file: Option<PathBuf>,
    #[serde(default = "default_true")]
    pub upload: bool,
    #[serde(default = "default_true")]
    pub amcheck: bool,
}

fn default_scratch_dir() -> PathBuf {
    std::env::temp_dir()
}
fn default_report_dir() -> PathBuf {
    PathBuf::from("/var/lib/walvault/drills")
}
// Evidence kept with the backups is the point of a drill; amcheck is what finds
// corruption that reads alone do not.
fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub keep_last: i64,
    #[serde(default)]
    pub keep_days: i64,
    #[serde(default)]
    pub keep_full: i64,
    #[serde(default)]
    pub dump_keep_daily: i64,
    #[serde(default)]
    pub dump_keep_weekly: i64,
    #[serde(default)]
    pub dump_keep_monthly: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    #[serde(default = "default_verify_concurrency")]
    pub concurrency: i64,
    #[serde(default = "default_pending_seconds")]
    pub pending_seconds: i64,
}

// Checking is download-bound with light CPU (sha256, zstd): a few at once hide latency.
fn default_verify_concurrency() -> i64 {
    4
}
// Ten minutes: far longer than one push takes, even through S3 retries.
fn default_pending_seconds() -> i64 {
    600
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    pub conninfo: Option<String>,
    pub bin_dir: Option<String>,
    pub bin_dir_13: Option<PathBuf>,
    pub bin_dir_14: Option<PathBuf>,
    pub bin_dir_15: Option<PathBuf>,
    pub bin_dir_16: Option<PathBuf>,
    pub bin_dir_17: Option<PathBuf>,
    pub bin_dir_18: Option<PathBuf>,
}

impl Postgres {
    /// Where the server programs of `major` were configured, with the key that
    /// said so: the per-major setting first, then `bin_dir` (its `{major}` filled in).
    pub fn bin_dir_for(&self, major: u32) -> Option<(String, PathBuf)> {
        let per_major = match major {
            13 => &self.bin_dir_13,
            14 => &self.bin_dir_14,
            15 => &self.bin_dir_15,
            16 => &self.bin_dir_16,
            17 => &self.bin_dir_17,
            18 => &self.bin_dir_18,
            _ => &None,
        };
        if let Some(dir) = per_major {
            return Some((format!("postgres.bin_dir_{major}"), dir.clone()));
        }
        self.bin_dir.as_ref().map(|d| {
            (
                "postgres.bin_dir".to_string(),
                PathBuf::from(d.replace("{major}", &major.to_string())),
            )
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    #[serde(default = "default_backup_part")]
    pub part_size_mb: i64,
    #[serde(default = "default_concurrency")]
    pub concurrency: i64,
    #[serde(default = "default_wal_wait")]
    pub wal_wait_seconds: i64,
    #[serde(default)]
    pub incremental: bool,
    #[serde(default = "default_full_every_days")]
    pub full_every_days: i64,
    #[serde(default = "default_max_increments")]
    pub max_increments: i64,
    #[serde(default)]
    pub max_rate_mb: i64,
    #[serde(default = "default_standby_max_lag")]
    pub standby_max_lag_mb: i64,
}

/// What `recover --standby` writes for streaming (the command line wins).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Standby {
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    #[serde(default = "default_concurrency")]
    pub concurrency: i64,
    #[serde(default)]
    pub max_rate_mb: i64,
}

// Parts of 256 MiB keep both cores busy on databases of a few GiB while a part
// still streams (memory stays at a few MiB per part whatever its size).
fn default_backup_part() -> i64 {
    256
}
// PostgreSQL itself would wait for ever; ten minutes covers an archiver that
// retries a slow store, not one that is failing.
fn default_wal_wait() -> i64 {
    600
}
// A standby a GiB of WAL behind is not streaming its primary's pace: its
// backup would start well behind what the primary holds.
fn default_standby_max_lag() -> i64 {
    1024
}
// A weekly full and daily increments: a restore reads at most seven backups.
fn default_full_every_days() -> i64 {
    7
}
fn default_max_increments() -> i64 {
    6
}
// One part per core: compression and encryption are CPU-bound.
fn default_concurrency() -> i64 {
    2
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    #[serde(default = "default_level")]
    pub level: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    #[serde(default)]
    pub recipients: Vec<String>,
    pub identity_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    #[serde(default = "default_fetch_retries")]
    pub retries: i64,
    #[serde(default = "default_prefetch")]
    pub prefetch: i64,
    #[serde(default = "default_push_concurrency")]
    pub prefetch_concurrency: i64,
    pub spool_dir: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    #[serde(default = "default_lookahead")]
    pub lookahead: i64,
    #[serde(default = "default_push_concurrency")]
    pub concurrency: i64,
    #[serde(default)]
    pub max_backlog: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_true")]
    pub create_slot: bool,
    #[serde(default = "default_flush_seconds")]
    pub flush_seconds: i64,
    #[serde(default = "default_flush_bytes")]
    pub flush_bytes: i64,
}

fn default_slot() -> String {
    "walvault".to_string()
}
// The RPO of asynchronous streaming: a second, as the issue that asked for it.
fn default_flush_seconds() -> i64 {
    1
}
// A burst is stored in steps of 4 MiB rather than a second's worth at once.
fn default_flush_bytes() -> i64 {
    4 << 20
}

// A backlog drains in batches of 1 + 8; one call stays well under a second.
fn default_lookahead() -> i64 {
    8
}
// Uploads wait on the network more than on the CPU: 4 at once on 2 cores.
fn default_push_concurrency() -> i64 {
    4
}
// 16 segments ahead: 16-48 MB compressed in the spool, enough to keep replay fed.
fn default_prefetch() -> i64 {
    16
}

fn default_repo() -> String {
    DEFAULT_REPO.to_string()
}
fn default_log_level() -> String {
    "info".to_string()
}
// zstd-1: WAL compresses about as well at 1 as at 3, at twice the speed; the
// archive path is latency-bound (one segment per call).
fn default_level() -> i64 {
    1
}
fn default_fetch_retries() -> i64 {
    3
}

/// The environment variable that overrides a key: `s3.force_path_style` → `WALVAULT_S3_FORCE_PATH_STYLE`.
pub fn env_name(key: &str) -> String {
    format!("WALVAULT_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// `--set key=value` arguments, each naming a known key.
pub fn parse_sets(sets: &[String]) -> Result<Vec<(String, String)>> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').with_context(|| {
                format!("--set '{s}': use KEY=VALUE, e.g. --set repo=s3://bucket/prefix")
            })?;
            let k = k.trim();
            if find(k).is_none() {
                bail!("--set '{s}': unknown setting {k} (see docs/configuration.md)");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Settings that hold or may hold a secret: never carried onto a command line.
const SECRET_KEYS: &[&str] = &["postgres.conninfo", "standby.primary_conninfo"];

/// The settings this process took from outside its config file (WALVAULT_*
/// variables, `--set`, and the AWS endpoint and region variables), as
/// `key=value`, secrets left out: what a command that PostgreSQL runs later,
/// with another environment, needs in order to find the same repository.
pub fn carried_settings(sets: &[String]) -> Result<Vec<String>> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for k in keys() {
        if let Ok(v) = std::env::var(env_name(k.name)) {
            out.insert(k.name.to_string(), v);
        }
    }
    for (k, v) in parse_sets(sets)? {
        out.insert(k, v);
    }
    for (var, key) in [
        ("AWS_ENDPOINT_URL", "s3.endpoint"),
        ("AWS_REGION", "s3.region"),
    ] {
        if let Ok(v) = std::env::var(var) {
            out.entry(key.to_string()).or_insert(v);
        }
    }
    Ok(out
        .into_iter()
        .filter(|(k, _)| !SECRET_KEYS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect())
}

/// Where the file comes from: an explicit path must exist; the default may be absent.
pub enum Source<'a> {
    Explicit(&'a Path),
    Default,
}

impl Config {
    /// Loads the file (if any), applies the environment, checks every value.
    pub fn load(source: Source<'_>, env: &BTreeMap<String, String>) -> Result<Config> {
        let (path, text) = match source {
            Source::Explicit(p) => (
                p.to_path_buf(),
                Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read config file {}", p.display()))?,
                ),
            ),
            Source::Default => {
                let p = PathBuf::from(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(&p) {
                    Ok(t) => (p, Some(t)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (p, None),
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot read config file {}", p.display()))
                    }
                }
            }
        };
        let mut table = match &text {
            Some(t) => t
                .parse::<Table>()
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?,
            None => Table::new(),
        };
        let origin = path.display().to_string();
        check_known(&table, "", &origin)?;
        for k in keys() {
            if let Some(v) = lookup(&table, k.name) {
                k.check(v).with_context(|| format!("in {origin}"))?;
            }
        }
        apply_env(&mut table, env)?;
        // The environment's and --set's values, by the same declarations.
        for k in keys() {
            if let Some(v) = lookup(&table, k.name) {
                k.check(v)?;
            }
        }
        let cfg: Config = Value::Table(table)
            .try_into()
            .context("configuration does not fit the expected shape")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads with the process environment, then `sets` (`--set key=value`) over it.
    pub fn load_from_process(explicit: Option<&Path>, sets: &[String]) -> Result<Config> {
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("WALVAULT_"))
            .collect();
        for (key, value) in parse_sets(sets)? {
            env.insert(env_name(&key), value);
        }
        let source = match explicit {
            Some(p) => Source::Explicit(p),
            None => Source::Default,
        };
        Config::load(source, &env)
    }

    /// The repository these settings name, opened.
    pub async fn open_store(&self) -> Result<Arc<dyn Store>> {
        store::open(&self.repo, &self.s3, &self.azure).await
    }

    /// What no single key's declaration can say (those are checked on the
    /// values as read, see [`crate::setting::Key::check`]).
    fn validate(&self) -> Result<()> {
        for r in &self.encryption.recipients {
            r.parse::<age::x25519::Recipient>().map_err(|e| {
                anyhow::anyhow!(
                    "config key encryption.recipients: '{r}' is not an age X25519 recipient ({e}); it starts with age1, as printed by walvault keygen"
                )
            })?;
        }
        self.s3.validate()?;
        store::RepoUrl::parse(&self.repo).context("config key repo")?;
        Ok(())
    }
}

fn lookup<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.').peekable();
    let mut t = table;
    while let Some(p) = parts.next() {
        let v = t.get(p)?;
        if parts.peek().is_none() {
            return Some(v);
        }
        t = v.as_table()?;
    }
    None
}

fn insert(table: &mut Table, key: &str, value: Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
}

fn check_known(table: &Table, prefix: &str, origin: &str) -> Result<()> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let is_key = find(&path).is_some();
        let is_section = keys().any(|k| k.name.starts_with(&format!("{path}.")));
        match v {
            Value::Table(t) if is_section => check_known(t, &path, origin)?,
            _ if is_key => {}
            _ => bail!("unknown config key '{path}' in {origin}"),
        }
    }
    Ok(())
}

fn apply_env(table: &mut Table, env: &BTreeMap<String, String>) -> Result<()> {
    for name in env.keys() {
        if ENV_NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        if !keys().any(|k| env_name(k.name) == *name) {
            bail!("unknown setting {name} in the environment (see docs/configuration.md)");
        }
    }
    for k in keys() {
        let (key, kind) = (k.name, k.kind);
        let name = env_name(key);
        let Some(raw) = env.get(&name) else { continue };
        let value = match kind {
            Kind::Str => Value::String(raw.clone()),
            Kind::Int => Value::Integer(raw.trim().parse().map_err(|_| {
                anyhow::anyhow!("{name} (config key {key}): expected an integer, found '{raw}'")
            })?),
            Kind::Bool => Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => bail!("{name} (config key {key}): expected true or false, found '{raw}'"),
            }),
            Kind::List => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            ),
        };
        insert(table, key, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn with_file(text: &str, e: &[(&str, &str)]) -> Result<Config> {
        let (_dir, p) = crate::testing::temp_path("w.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(Source::Explicit(&p), &env(e))
    }

    #[test]
    fn defaults_without_file() {
        let (_dir, p) = crate::testing::temp_path("empty.toml");
        std::fs::write(&p, "").unwrap();
        let c = Config::load(Source::Explicit(&p), &env(&[])).unwrap();
        assert_eq!(c.repo, DEFAULT_REPO);
        assert_eq!(c.compression.level, 1);
        assert!(c.encryption.recipients.is_empty());
        assert!(!c.s3.force_path_style);
    }

    #[test]
    fn environment_overrides_file() {
        let c = with_file(
            "repo = \"file:///a\"\n[compression]\nlevel = 5\n[s3]\nforce_path_style = false\n",
            &[
                ("WALVAULT_COMPRESSION_LEVEL", "7"),
                ("WALVAULT_S3_FORCE_PATH_STYLE", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.repo, "file:///a");
        assert_eq!(c.compression.level, 7);
        assert!(c.s3.force_path_style);
    }

    #[test]
    fn environment_sets_keys_absent_from_file() {
        let c = with_file(
            "",
            &[
                ("WALVAULT_REPO", "s3://bucket/x"),
                ("WALVAULT_S3_SSE", "AES256"),
            ],
        )
        .unwrap();
        assert_eq!(c.repo, "s3://bucket/x");
        assert_eq!(c.s3.sse.as_deref(), Some("AES256"));
    }

    #[test]
    fn recipients_list_from_environment() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let c = with_file(
            "",
            &[("WALVAULT_ENCRYPTION_RECIPIENTS", &format!("{a}, {b}"))],
        )
        .unwrap();
        assert_eq!(c.encryption.recipients, vec![a, b]);
    }

    #[test]
    fn errors_name_the_key() {
        // (the file, the environment, what the error must say)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "[compression]\nlevel = \"fast\"\n",
                &[],
                &["compression.level", "integer"],
            ),
            (
                "",
                &[("WALVAULT_COMPRESSION_LEVEL", "x")],
                &["WALVAULT_COMPRESSION_LEVEL"],
            ),
            (
                "[compresion]\nlevel = 3\n",
                &[],
                &["unknown config key 'compresion'"],
            ),
            (
                "",
                &[("WALVAULT_COMPRESION_LEVEL", "3")],
                &["WALVAULT_COMPRESION_LEVEL"],
            ),
            (
                "[compression]\nlevel = 40\n",
                &[],
                &["compression.level", "out of range"],
            ),
            (
                "[encryption]\nrecipients = [\"nope\"]\n",
                &[],
                &["encryption.recipients"],
            ),
            ("[s3]\nsse = \"rot13\"\n", &[], &["s3.sse"]),
            ("repo = \"ftp://x\"\n", &[], &["repo"]),
            ("", &[], &[]),
        ];
        for (file, vars, says) in cases {
            let r = with_file(file, vars);
            if says.is_empty() {
                assert!(r.is_ok(), "{file:?} {vars:?}: {:?}", r.err());
                continue;
            }
            let e = format!("{:#}", r.unwrap_err());
            assert!(says.iter().all(|s| e.contains(s)), "{file:?} {vars:?}: {e}");
        }
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(
            Source::Explicit(Path::new("/nonexistent/w.toml")),
            &env(&[]),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/w.toml"));
    }

    #[test]
    fn env_names() {
        assert_eq!(
            env_name("s3.force_path_style"),
            "WALVAULT_S3_FORCE_PATH_STYLE"
        );
        assert_eq!(
            env_name("encryption.identity_file"),
            "WALVAULT_ENCRYPTION_IDENTITY_FILE"
        );
        assert_eq!(env_name("repo"), "WALVAULT_REPO");
    }
}
