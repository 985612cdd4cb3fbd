//! Command-line definitions only; `main.rs` dispatches.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    WalPush {
        /// Path of the file, as PostgreSQL's %p gives it (relative to the data directory)
        path: PathBuf,
    },
    /// Restore one WAL file: restore_command = 'walvault wal-fetch %f %p'
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
    WalFetch {
        /// WAL file name (%f)
        name: String,
        /// Where to write it (%p)
        dest: PathBuf,
    },
    /// Download WAL segments ahead into the prefetch spool (wal-fetch starts it), or --clean it
    #[command(after_help = "\
postgresql.conf (or what `walvault recover` writes):
    recovery_end_command = '/usr/local/bin/walvault wal-prefetch --clean'

wal-fetch starts this in the background while PostgreSQL replays; by hand it is only
useful with --clean, which stops a running prefetcher and removes the spool (default
pg_wal/walvault_prefetch below the current directory, which is the data directory
when PostgreSQL runs recovery_end_command).")]
    WalPrefetch {
        /// The spool directory (default fetch.spool_dir, else pg_wal/walvault_prefetch)
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// Timeline of the segments
        #[arg(long, required_unless_present = "clean")]
        timeline: Option<u32>,
        /// Stop a running prefetcher and remove the spool
        #[arg(long, conflicts_with = "names")]
        clean: bool,
        /// After NAMES, keep this many segments after the one wal-fetch asked
        /// for last, until replay stops asking (wal-fetch starts it so)
        #[arg(long, value_name = "N", requires = "segment_size")]
        ahead: Option<usize>,
        /// The cluster's WAL segment size in bytes (with --ahead)
        #[arg(long, value_name = "BYTES", requires = "ahead")]
        segment_size: Option<u64>,
        /// Segment names to download
        names: Vec<String>,
    },
    /// Create an age identity file (mode 0600) and print its public recipient
    Keygen {
        /// Where to write the identity; an existing file is never overwritten
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Take an online base backup (nightly cron)
    #[command(after_help = "\
Connects like psql (PGHOST, PGPORT, PGUSER, PGPASSWORD, or postgres.conninfo), runs
pg_backup_start, reads the data directory itself (same exclusions as pg_basebackup,
tablespaces included), stores it as compressed, encrypted tar parts uploaded in parallel,
then pg_backup_stop, waiting until the WAL the backup needs is archived. The manifest
is written last: a backup that did not finish is never listed.

On a streaming standby the backup runs there (its reads stay off the primary): refused
when the standby does not stream or replays more than backup.standby_max_lag_mb behind;
its last segment reaches the repository when the primary leaves it (archive_timeout
there). backup-list shows the host and role each backup was taken on.")]
    BackupPush {
        /// The data directory (default: PGDATA, else asked from the server)
        #[arg(long, env = "PGDATA")]
        pgdata: Option<PathBuf>,
        /// Immediate checkpoint instead of a spread one (faster start, more I/O at once)
        #[arg(long)]
        fast: bool,
        /// Backup label (default: walvault <id>)
        #[arg(long)]
        label: Option<String>,
        /// A full backup, whatever backup.incremental says
        #[arg(long, conflicts_with = "incremental")]
        full: bool,
        /// Only what changed since the newest backup it can build on (a full one
        /// when there is none, or when backup.full_every_days / backup.max_increments ask for it)
        #[arg(long)]
        incremental: bool,
    },
    /// List complete backups and the recoverable window
    BackupList {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into an empty directory and set up recovery to a target
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
    Recover {
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
    },
    /// Keep a backup whatever the retention policy (audit keeps), or unmark it
    #[command(after_help = "\
Examples:
  walvault backup-mark 20261122T020000Z --permanent --note 'year-end audit 2026'
  walvault backup-mark 20261122T020000Z --keep-until 2033-12-31
  walvault backup-mark 20261122T020000Z --unmark

A marked backup keeps its WAL from start to stop, so it stays restorable on its own.
On S3 the backup's objects and that WAL are tagged walvault-class=permanent
(--keep-until: kept; --unmark: standard): the bucket's lifecycle rules (terraform/)
move permanent objects to colder storage and keep them 7 years.")]
    BackupMark {
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
    },
    /// Apply retention: remove backups the policy does not keep and WAL no kept backup needs
    #[command(after_help = "\
A dry run unless --confirm: it prints every backup with keep or REMOVE and why, and what
WAL would go. Policies (config [retention] or the flags; a backup is kept when either
keeps it):
  --keep-last N   the newest N restorable backups
  --keep-days D   every backup needed to recover to any time in the last D days
Permanent and keep-until backups (backup-mark) are never removed, and keep the WAL from
their start to their stop. All WAL from the start of the oldest kept backup onwards is
kept, and every timeline history file. Objects still under S3 Object Lock are skipped
and reported; the run carries on.

Exit status: 0 done (or dry run), 1 a removal failed or the policy is missing.")]
    Delete {
        /// Keep the newest N restorable backups (overrides retention.keep_last)
        #[arg(long, value_name = "N")]
        keep_last: Option<u32>,
        /// Keep what recovery within the last D days needs (overrides retention.keep_days)
        #[arg(long, value_name = "D")]
        keep_days: Option<u32>,
        /// Keep the newest N full backups with their increments (overrides retention.keep_full)
        #[arg(long, value_name = "N")]
        keep_full: Option<u32>,
        /// Remove for real (without it, only show what would be removed)
        #[arg(long)]
        confirm: bool,
    },
    /// Find WAL gaps and timeline breaks since each backup
    #[command(after_help = "\
For each backup: whether its own WAL (start to stop) is present, and how far replay
from it gets along the latest timeline. Then every gap since the oldest restorable
backup, each either \"missing, probably still being pushed\" (its successors were stored
less than verify.pending_seconds ago) or LOST, and timelines without a history file.

Exit status: 0 the recoverable window is unbroken (pending gaps are warned about);
1 a segment is lost after the oldest backup, or no backup is restorable.")]
    WalVerify {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check that every object backups need is present and intact
    #[command(after_help = "\
For each backup (or --backup ID): every tar part, the file list, backup_label,
tablespace_map and every WAL segment from its start to its stop. Without the private
key the stored bytes are checked against their recorded sha256 (works on the database
host); with encryption.identity_file, or in an unencrypted repository, everything is
also decoded and the sha256 of every file inside the parts is checked. --wal adds
every WAL object in the repository.

Exit status: 0 all intact; 1 a problem, each object named.")]
    Verify {
        /// Only this backup
        #[arg(long)]
        backup: Option<String>,
        /// Also check every WAL object in the repository
        #[arg(long)]
        wal: bool,
    },
    /// Archive health: last archived WAL, backlog (the live RPO), last backup, window
    #[command(after_help = "\
Reads the repository and, when it can, PostgreSQL: the .ready files in the data
directory (--pgdata or PGDATA) or pg_ls_archive_statusdir() (needs pg_monitor), and
pg_stat_archiver. A source that cannot be read is reported as down; the rest is
still shown and written.

  walvault status
  walvault status --json
  walvault status --prometheus /var/lib/prometheus/node-exporter/walvault.prom

--prometheus writes a node_exporter textfile atomically (cron every minute); the
alert rules in examples/prometheus/ use its metrics.

Exit status: 0 both sources read; 1 the repository or PostgreSQL could not be read.")]
    Status {
        /// The data directory, for the archive backlog (.ready files)
        #[arg(long, env = "PGDATA")]
        pgdata: Option<PathBuf>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Write a node_exporter textfile (atomically) instead of the report
        #[arg(long, value_name = "FILE")]
        prometheus: Option<PathBuf>,
    },
    /// Prove a restore: restore into a scratch cluster, check, measure RTO/RPO, report
    #[command(after_help = "\
Examples:
  walvault drill                                   # latest backup, end of the archive
  walvault drill --target-time '2026-11-22 03:00:00+00' --checks /etc/walvault/drill-checks.sql
  walvault drill --backup 20261122T020000Z --target immediate --no-upload

Restores the backup into a new scratch directory (drill.scratch_dir), starts PostgreSQL
there on a private socket (no TCP), waits until recovery reaches the target, then checks:
every database connects, every table reads (row counts), amcheck on indexes and tables
where the extension is installed, and each named query of the checks file (it passes
when it returns no rows, or a single true). Measures plan, restore and recovery times
(the RTO) and the RPO (age of the newest WAL in the repository), compares them with
drill.rto_target_seconds and drill.rpo_target_seconds, and writes
walvault-drill-<id>.md and .json into drill.report_dir (and the repository's drills/).
The scratch cluster is stopped and removed in every case, also on Ctrl-C.

Checks file:
  -- check: no orphaned order lines
  -- database: shop
  select l.id from order_lines l left join orders o on o.id = l.order_id where o.id is null;

Exit status: 0 every check passed and every objective was met; 1 otherwise (the
report names each failure), or when the drill could not start (bad input).")]
    Drill {
        #[command(flatten)]
        target: TargetArgs,
        /// Use this backup instead of choosing one
        #[arg(long)]
        backup: Option<String>,
        /// Drill a logical dump instead (dump-list): restored into a new cluster of
        /// the newest major installed, then checked
        #[arg(long, value_name = "ID", conflicts_with_all = ["backup", "target_time", "target_lsn", "target_xid", "target_name", "target", "target_timeline"])]
        dump: Option<String>,
        /// SQL file of named checks (overrides drill.checks_file)
        #[arg(long, value_name = "FILE")]
        checks: Option<PathBuf>,
        /// Where to make the scratch directory (overrides drill.scratch_dir)
        #[arg(long, value_name = "DIR")]
        scratch_dir: Option<PathBuf>,
        /// Where to write the reports (overrides drill.report_dir)
        #[arg(long, value_name = "DIR")]
        report_dir: Option<PathBuf>,
        /// Do not store the reports in the repository (drill.upload)
        #[arg(long)]
        no_upload: bool,
        /// Do not run amcheck (drill.amcheck)
        #[arg(long)]
        no_amcheck: bool,
        /// Who runs the drill, for the report (default: SUDO_USER, else the OS user)
        #[arg(long)]
        operator: Option<String>,
    },
    /// Bring tables back as they were at a point in time, beside or in place of the live ones
    #[command(after_help = "\
Restores the backup into a scratch cluster (as a drill does: private socket, nothing acting
outward, removed on any exit), recovers it to the target, and takes the tables from there
with their indexes, constraints, sequences' values and grants. Destinations:
  (default)      beside the live table as NAME_restored_YYYYMMDD_HHMMSS, or --as NEW_NAME
  --replace      in place of the live table: DROP and load in one transaction; refused when
                 views or other tables' foreign keys depend on it, unless --cascade
  --to-file F    a custom-format dump (pg_restore -d DB F loads it)
The destination is postgres.conninfo (or PGHOST...) with --database, or --into CONNINFO.
Names taken, unknown tables and targets outside the window are refused before anything is
written. Example, the orders as they were before a bad DELETE at 14:05:
    walvault restore-table --database shop --table public.orders \\
        --target-time '2026-12-03 14:04:59+00' --as orders_before_delete")]
    RestoreTable {
        /// A table to restore, SCHEMA.NAME (public when no schema; repeatable)
        #[arg(
            long,
            value_name = "SCHEMA.NAME",
            required_unless_present = "schema",
            conflicts_with = "schema"
        )]
        table: Vec<String>,
        /// Every table of this schema (restored beside as a new schema)
        #[arg(long, value_name = "SCHEMA")]
        schema: Option<String>,
        /// The database the tables are in
        #[arg(long, short = 'd', value_name = "NAME")]
        database: String,
        #[command(flatten)]
        target: TargetArgs,
        /// Stop just before the target instead of just after it
        #[arg(long)]
        exclusive: bool,
        /// Use this backup instead of choosing one
        #[arg(long)]
        backup: Option<String>,
        /// The server to load into (default: postgres.conninfo with --database)
        #[arg(long, value_name = "CONNINFO", conflicts_with = "to_file")]
        into: Option<String>,
        /// The restored table's name (or schema's, with --schema) beside the live one
        #[arg(long = "as", value_name = "NEW_NAME", conflicts_with_all = ["replace", "to_file"])]
        as_name: Option<String>,
        /// Replace the live tables, in one transaction
        #[arg(long, conflicts_with = "to_file")]
        replace: bool,
        /// With --replace: also drop the views and foreign keys that depend on the tables
        #[arg(long, requires = "replace")]
        cascade: bool,
        /// Write a custom-format dump file instead of loading
        #[arg(long, value_name = "FILE")]
        to_file: Option<PathBuf>,
        /// Where to make the scratch directory (default drill.scratch_dir)
        #[arg(long, value_name = "DIR")]
        scratch_dir: Option<PathBuf>,
    },
    /// Logical dumps: pg_dump of each database (and the globals) into the repository
    #[command(after_help = "\
Each database's pg_dump --format=custom is streamed through the codec (zstd, age, sha256)
into dumps/<id>/<database>.dump, the roles and tablespaces (pg_dumpall --globals-only)
into dumps/<id>/globals.sql, and a clear manifest (server version, sizes, sha256, every
table with its row estimate) is written last. Prints the dump id. Any later PostgreSQL
restores it (dump-restore): the long keeps a physical backup cannot promise.")]
    DumpPush {
        /// A database to dump (repeatable; default: every database that accepts connections)
        #[arg(long, short = 'd', value_name = "NAME")]
        database: Vec<String>,
        /// Leave out the roles and tablespaces
        #[arg(long)]
        no_globals: bool,
    },
    /// List the logical dumps
    DumpList {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Restore a logical dump (a whole database, or tables) into a server of the same or a newer major
    DumpRestore {
        /// Dump id, as dump-list shows it
        id: String,
        /// The server and database to restore into (default database: the dump's name);
        /// a database that does not exist is created
        #[arg(long, value_name = "CONNINFO")]
        into: String,
        /// Which database of the dump (when it holds several)
        #[arg(long, short = 'd', value_name = "NAME")]
        database: Option<String>,
        /// Only this table, SCHEMA.NAME (repeatable, one schema)
        #[arg(long, value_name = "SCHEMA.NAME")]
        table: Vec<String>,
        /// Apply the dump's roles and tablespaces first
        #[arg(long)]
        globals: bool,
    },
    /// Check logical dumps: stored bytes without the key, the archive's table of contents with it
    DumpVerify {
        /// Dump ids (default: all)
        ids: Vec<String>,
        /// Check only the stored bytes, even with the key
        #[arg(long)]
        stored_only: bool,
    },
    /// Bind the repository to a cluster (done by the first wal-push otherwise)
    RepoInit {
        /// The cluster's data directory
        #[arg(long, env = "PGDATA")]
        pgdata: PathBuf,
    },
    /// After a major upgrade: bind a new repository to the upgraded cluster and switch to it
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
    RepoSwitch {
        /// The new repository (a new prefix or directory), in the `repo` setting's form
        #[arg(long, value_name = "URL")]
        to: String,
        /// The upgraded cluster's data directory
        #[arg(long, env = "PGDATA")]
        pgdata: PathBuf,
    },
}

/// Where recovery stops; shared by `recover`, `drill` and `restore-table`.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Recover to this time: RFC 3339 or PostgreSQL's form, with a zone
    /// (rounded to the microsecond, as PostgreSQL reads it)
    #[arg(long, value_name = "TIME", conflicts_with_all = ["target_lsn", "target_xid", "target_name", "target"])]
    pub target_time: Option<String>,
    /// Recover to this WAL location (e.g. 0/3000A28)
    #[arg(long, value_name = "LSN", conflicts_with_all = ["target_xid", "target_name", "target"])]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id
    #[arg(long, value_name = "XID", conflicts_with_all = ["target_name", "target"])]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub target_name: Option<String>,
    /// immediate (end of the backup) or latest (end of the archive, the default)
    #[arg(long, value_name = "immediate|latest")]
    pub target: Option<String>,
    /// Timeline to follow: a number, or latest (default)
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<String>,
}
