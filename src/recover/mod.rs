//! `recover`: choose a backup, restore it, write the recovery settings and,
//! with `--start`, run PostgreSQL until the target and report where it ended.
//!
//! Everything that can be refused is refused before anything is written.

pub mod end;
pub mod isolate;
pub mod settings;
pub mod target;

use crate::backup::{self, restore, Manifest};
use crate::codec::Codec;
use crate::config::Config;
use crate::pg;
use crate::store::Store;
use crate::wal::inventory::{Inventory, Run};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{Action, Target};

pub struct Options {
    pub pgdata: PathBuf,
    pub target: Target,
    /// None: the latest timeline.
    pub timeline: Option<u32>,
    pub action: Action,
    pub exclusive: bool,
    pub backup: Option<String>,
    pub overwrite: bool,
    /// Restore over a copy of the same cluster: only files that differ are written.
    pub delta: bool,
    pub dry_run: bool,
    pub start: bool,
    pub port: Option<u16>,
    pub socket_dir: Option<PathBuf>,
    pub tablespace_map: BTreeMap<String, PathBuf>,
    /// Unmapped tablespaces go to `<root>/<oid>` instead of their original
    /// location (drills restore everything inside their scratch directory).
    pub tablespace_root: Option<PathBuf>,
    /// Keep archive_mode as in the backup (for a cluster that becomes the primary).
    pub archive: bool,
    /// The config file restore_command should name, when one is in use.
    pub config_file: Option<PathBuf>,
    /// Settings restore_command carries (`key=value`, no secrets), so that the
    /// server finds the repository whatever environment it is restarted with.
    pub carry: Vec<String>,
    /// Where the server programs of each major are (`postgres.bin_dir*`).
    pub postgres: crate::config::Postgres,
    /// Make a standby (standby.signal) instead of a server that ends recovery.
    pub standby: Option<Standby>,
}

/// What a restored standby streams from, when it should (else it follows the archive).
#[derive(Clone, Debug, Default)]
pub struct Standby {
    /// primary_conninfo; never logged nor printed (it may hold a password).
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
}

pub struct Plan {
    pub backup: Manifest,
    pub timeline: u32,
    pub wal: Run,
    /// Tablespace oid → the directory it is restored into.
    pub tablespaces: BTreeMap<String, PathBuf>,
    /// The backup's PostgreSQL major.
    pub major: u32,
    /// The directory of that major's pg_ctl and postgres (checked); always
    /// found with `--start`, else when it can be.
    pub bin_dir: Result<PathBuf, String>,
}

pub async fn run(cfg: &Config, store: Arc<dyn Store>, codec: &Codec, opts: Options) -> Result<()> {
    let t0 = Instant::now();
    let plan = plan(store.as_ref(), codec, &opts).await?;
    let b = &plan.backup;
    println!(
        "backup:   {} (ended {}, timeline {}, {} MiB)",
        b.id,
        b.stop_time.to_rfc3339(),
        b.timeline,
        b.raw_bytes >> 20
    );
    if b.is_incremental() {
        println!(
            "chain:    incremental on {}; restored from {} then {}",
            b.parent.as_deref().unwrap_or_default(),
            b.chain.join(", "),
            b.id
        );
    }
    if opts.delta {
        println!(
            "delta:    over the copy in the target directory: only files that differ are written"
        );
    }
    println!(
        "WAL:      {}..{} needed for consistency, present",
        b.start_lsn, b.stop_lsn
    );
    match (&plan.wal.last, plan.wal.last_archived) {
        (Some(last), Some(at)) => println!(
            "archive:  WAL continues to {} (segment {last}, stored {}) on timeline {}",
            plan.wal.end_lsn,
            at.to_rfc3339(),
            plan.timeline
        ),
        (Some(last), None) => println!(
            "archive:  WAL continues to {} (segment {last}) on timeline {}",
            plan.wal.end_lsn, plan.timeline
        ),
        _ => {}
    }
    if let Some(gap) = &plan.wal.gap {
        println!("warning:  WAL gap at {gap}: recovery cannot go past it");
    }
    println!("target:   {}", opts.target.describe());
    println!("into:     {}", opts.pgdata.display());
    match &plan.bin_dir {
        Ok(dir) => println!("server:   PostgreSQL {} from {}", plan.major, dir.display()),
        Err(e) => println!("server:   {e}"),
    }
    for (oid, dir) in &plan.tablespaces {
        println!("          tablespace {oid} into {}", dir.display());
    }
    if opts.dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    let (restored, isolation) = restore_into(cfg, store, codec, &opts, &plan).await?;
    let restore_secs = t0.elapsed().as_secs_f64();
    println!(
        "restored: {} files, {} MiB in {:.1} s; recovery settings in postgresql.auto.conf",
        restored.files,
        restored.bytes >> 20,
        restore_secs
    );
    if let Some(line) = isolated_line(&opts, &isolation) {
        println!("{line}");
    }
    if !isolation.refusals.is_empty() {
        bail!(
            "{}; the copy is restored in {} but was not started",
            isolation.refusals.join("; "),
            opts.pgdata.display()
        );
    }
    if let (true, Some(why)) = (opts.start, &isolation.no_config) {
        bail!("--start: {why}");
    }
    if !opts.start {
        match &plan.bin_dir {
            Ok(dir) => println!("next:     {} -D {} start   (as the cluster's OS user, with walvault's settings in its environment)", dir.join("pg_ctl").display(), opts.pgdata.display()),
            Err(e) => println!("next:     pg_ctl of PostgreSQL {} -D {} start   (as the cluster's OS user, with walvault's settings in its environment); {e}", plan.major, opts.pgdata.display()),
        }
        if let Some(why) = &isolation.no_config {
            println!("warning:  {why}");
        }
        return Ok(());
    }
    let t1 = Instant::now();
    if opts.standby.is_some() {
        let (end, upstream) = start_standby(&opts, &plan).await?;
        println!(
            "standby:  consistent at LSN {} on timeline {}, accepting read-only connections, {upstream}; restore {:.1} s, recovery {:.1} s, total {:.1} s",
            end.lsn,
            end.timeline,
            restore_secs,
            t1.elapsed().as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let end = start(&opts, &plan, &[]).await?;
    println!(
        "recovered: ended at LSN {} on timeline {}, last replayed commit {}; restore {:.1} s, recovery {:.1} s, total {:.1} s",
        end.lsn,
        end.timeline,
        end.last_commit.map(|t| t.to_rfc3339()).unwrap_or_else(|| "none".into()),
        restore_secs,
        t1.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    // Where replay ended, against what was asked: a mismatch is a failure.
    let log = std::fs::read_to_string(log_path(&opts)).unwrap_or_default();
    let reached =
        end::check(&opts.target, opts.exclusive, &plan, &end, &log).with_context(|| {
            format!(
                "PostgreSQL is still running in {}; its log is {}",
                opts.pgdata.display(),
                log_path(&opts).display()
            )
        })?;
    println!("checked:  {reached}");
    Ok(())
}

/// The `isolated:` line: what keeps the copy from acting on production and
/// which of the backup's outward files were made the copy's own.
fn isolated_line(opts: &Options, iso: &isolate::Isolation) -> Option<String> {
    let mut parts = Vec::new();
    if !opts.archive && opts.standby.is_none() {
        parts.push("archive_mode off, logical replication workers off (subscriptions do not run); --archive for a cluster that becomes the primary".to_string());
    }
    parts.extend(iso.notes.iter().cloned());
    (!parts.is_empty()).then(|| format!("isolated: {}", parts.join("; ")))
}

/// Restores the planned backup into `opts.pgdata` (and its tablespace
/// directories), makes the copy's configuration its own and writes the
/// recovery settings; the server is not started.
pub async fn restore_into(
    cfg: &Config,
    store: Arc<dyn Store>,
    codec: &Codec,
    opts: &Options,
    plan: &Plan,
) -> Result<(restore::Restored, isolate::Isolation)> {
    let b = &plan.backup;
    // The versions the backup wrote, whatever replaced them since.
    let store = b.pinned(store);
    let label = codec
        .read_text(
            store.as_ref(),
            &format!("{}backup_label", backup::prefix(&b.id)),
        )
        .await?
        .context("the backup has no backup_label")?;
    let spcmap = codec
        .read_text(
            store.as_ref(),
            &format!("{}tablespace_map", backup::prefix(&b.id)),
        )
        .await?;
    let stored_config = match &b.server_config {
        Some(sc) => backup::server_config::get(store.as_ref(), codec, &b.id, sc).await?,
        None => Default::default(),
    };
    // Chosen and checked by plan, before anything was written.
    let ts_dirs = plan.tablespaces.clone();
    // Nothing is refused past this point: now --overwrite may clear the data
    // directory (and tablespace directories below it); never one outside it.
    if !opts.delta {
        ensure_empty(&opts.pgdata, opts.overwrite, true, "target directory")?;
    }
    let target = Arc::new(restore::Target {
        dir: opts.pgdata.clone(),
        tablespaces: ts_dirs.clone(),
    });
    std::fs::create_dir_all(&opts.pgdata)
        .with_context(|| format!("cannot create {}", opts.pgdata.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&opts.pgdata, std::fs::Permissions::from_mode(0o700))?;
    let restored = backup::chain::restore(
        store.clone(),
        codec,
        b,
        target,
        backup::chain::Options {
            concurrency: cfg.restore.concurrency as usize,
            delta: opts.delta,
            throttle: crate::throttle::Throttle::mib_per_second(cfg.restore.max_rate_mb),
        },
    )
    .await?;
    std::fs::write(opts.pgdata.join("backup_label"), label)?;
    if spcmap.is_some() || !ts_dirs.is_empty() {
        // Recovery makes pg_tblspc/<oid> links from this file: point them at the restored directories.
        let map: String = ts_dirs
            .iter()
            .map(|(oid, dir)| format!("{oid} {}\n", dir.display()))
            .collect();
        std::fs::write(opts.pgdata.join("tablespace_map"), map)?;
    }
    let isolation = isolate::apply(
        &opts.pgdata,
        b.server_config.as_ref(),
        &stored_config,
        opts.standby.is_some(),
    )?;
    write_settings(opts, plan, &isolation.settings)?;
    Ok((restored, isolation))
}

/// Starts PostgreSQL on the restored directory (with `extra` server options,
/// each `name=value`) and waits until recovery has reached its target.
pub async fn start(opts: &Options, plan: &Plan, extra: &[String]) -> Result<End> {
    let server = launch(opts, plan, extra)?;
    wait(opts, &server, &log_path(opts), plan.major).await
}

/// Starts the restored directory's postgres with the backup's major, logging
/// to stderr into a new [`pg::postmaster::LOG_FILE`] whatever its configuration says (the log
/// is read for where replay stopped: only this start's lines, in one place).
fn launch(opts: &Options, plan: &Plan, extra: &[String]) -> Result<pg::postmaster::Server> {
    let bin = plan.bin_dir.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let eff = pg::conf::of_data_dir(&opts.pgdata).unwrap_or_default();
    let (dirs, port) = socket(opts, &eff);
    for d in &dirs {
        if let Some(pid) = pg::postmaster::socket_in_use(d, port) {
            bail!("{}", socket_taken(port, pid, d));
        }
    }
    crate::files::remove_if_present(&log_path(opts))?;
    pg::postmaster::spawn(
        &bin.join("postgres"),
        &opts.pgdata,
        &log_path(opts),
        &server_args(opts, extra),
    )
}

/// Starts a restored standby and waits until it is consistent (it then
/// follows the archive, and streams when given a primary); returns where
/// replay stood and what it follows.
async fn start_standby(opts: &Options, plan: &Plan) -> Result<(End, String)> {
    let server = launch(opts, plan, &[])?;
    let conninfo = conninfo(opts);
    let mut last_note = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if server.exited().is_some() {
            bail!(
                "PostgreSQL stopped before the standby was consistent: {}",
                pg::postmaster::words(&log_path(opts))
            );
        }
        let client = match pg::conn::connect(Some(&conninfo)).await {
            Ok(c) => c,
            Err(_) => {
                if last_note.elapsed() > Duration::from_secs(10) {
                    tracing::info!("standby starting: not yet consistent (hot_standby must be on for walvault to see it)");
                    last_note = Instant::now();
                }
                continue;
            }
        };
        let row = client
            .query_one(
                "select pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                 (select timeline_id from pg_control_checkpoint()), \
                 (select status || ' from ' || coalesce(sender_host, '?') || ':' \
                  || coalesce(sender_port::text, '?') from pg_stat_wal_receiver)",
                &[],
            )
            .await?;
        let in_recovery: bool = row.get(0);
        if !in_recovery {
            bail!(
                "the restored server left recovery: it is no standby (was standby.signal removed?)"
            );
        }
        let receiver: Option<String> = row.get(3);
        let upstream = match (
            &receiver,
            opts.standby
                .as_ref()
                .and_then(|s| s.primary_conninfo.as_ref()),
        ) {
            (Some(r), _) => format!("WAL receiver {r}"),
            (None, Some(_)) => {
                "following the archive until its WAL receiver connects to the primary".into()
            }
            (None, None) => "following the archive (no primary_conninfo)".into(),
        };
        return Ok((
            End {
                lsn: row.get::<_, Option<String>>(1).unwrap_or_default(),
                timeline: row.get(2),
                last_commit: None,
            },
            upstream,
        ));
    }
}

fn socket_taken(port: u16, pid: i32, dir: &Path) -> String {
    format!(
        "port {port} is in use by a running server (pid {pid}, its socket lock in {}); give the copy its own: --port N (and --socket-dir DIR)",
        dir.display()
    )
}

/// postgres's arguments for a restored server: our port and socket
/// directory, logging to stderr only (walvault reads it), `extra` settings.
fn server_args(opts: &Options, extra: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(p) = opts.port {
        args.extend(["-p".to_string(), p.to_string()]);
    }
    if let Some(d) = &opts.socket_dir {
        args.extend(["-k".to_string(), d.display().to_string()]);
    }
    for setting in ["logging_collector=off", "log_destination=stderr"]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
    {
        args.extend(["-c".to_string(), setting]);
    }
    args
}

/// The socket directories and port the restored server will use.
fn socket(opts: &Options, eff: &pg::conf::Loaded) -> (Vec<PathBuf>, u16) {
    let dirs = match &opts.socket_dir {
        Some(d) => vec![d.clone()],
        None => eff
            .get("unix_socket_directories")
            .unwrap_or("/var/run/postgresql")
            .split(',')
            .map(|d| d.trim())
            .filter(|d| !d.is_empty() && !d.starts_with('@'))
            .map(|d| opts.pgdata.join(d))
            .collect(),
    };
    let port = opts
        .port
        .or_else(|| eff.get("port").and_then(|p| p.parse().ok()))
        .unwrap_or(5432);
    (dirs, port)
}

/// How walvault connects to the restored server: our overrides, else what
/// its configuration says.
fn conninfo(opts: &Options) -> String {
    let eff = pg::conf::of_data_dir(&opts.pgdata).unwrap_or_default();
    let (dirs, port) = socket(opts, &eff);
    let sock = dirs
        .into_iter()
        .next()
        .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
    format!(
        "host='{}' port={port} dbname=postgres",
        pg::conn::escape(&sock.display().to_string())
    )
}

/// The server log of a restored cluster started by walvault.
pub fn log_path(opts: &Options) -> PathBuf {
    pg::postmaster::log_path(&opts.pgdata)
}

/// Chooses the backup and checks that the target can be reached; writes nothing.
pub async fn plan(store: &dyn Store, codec: &Codec, opts: &Options) -> Result<Plan> {
    if let Some(pid) = pg::postmaster::running_pid(&opts.pgdata) {
        bail!(
            "a PostgreSQL server (pid {pid}) is running in {}; stop it first",
            opts.pgdata.display()
        );
    }
    if !opts.delta {
        ensure_empty(&opts.pgdata, opts.overwrite, false, "target directory")?;
    }
    if opts.standby.is_some() && opts.target != Target::Latest {
        bail!(
            "--standby: a standby follows its primary without end; a recovery target ({}) is for a recovery that stops (leave it out)",
            opts.target.describe()
        );
    }
    if let (true, Some(port), Some(dir)) = (opts.start, opts.port, &opts.socket_dir) {
        // Known before the restore: refused before anything is written.
        if let Some(pid) = pg::postmaster::socket_in_use(dir, port) {
            bail!("{}", socket_taken(port, pid, dir));
        }
    }
    if opts.start && unsafe { libc::geteuid() } == 0 {
        bail!("--start: PostgreSQL refuses to run as root; run walvault recover as the cluster's OS user (e.g. postgres)");
    }
    let listing = backup::list(store).await?;
    if listing.complete.is_empty() {
        bail!(
            "{} holds no complete backup; take one with walvault backup-push",
            store.locate("")
        );
    }
    let seg_size = listing.complete[0].wal_segment_size;
    let inv = Inventory::load(store, codec, seg_size).await?;
    let tli = opts.timeline.unwrap_or_else(|| inv.latest_timeline());
    let reachable: Vec<&Manifest> = listing
        .complete
        .iter()
        .filter(|m| backup::restorable_on(&listing, &inv, m, tli))
        .collect();
    let chosen: Manifest = match &opts.backup {
        Some(id) => {
            let m = backup::read_manifest(store, id).await?;
            if !reachable.iter().any(|r| r.id == m.id) {
                bail!("backup {id} cannot reach timeline {tli}, or WAL it needs is missing from the repository");
            }
            m
        }
        None => {
            let earliest = reachable.first().with_context(|| {
                format!("no complete backup with its WAL can reach timeline {tli}")
            })?;
            let pick = match &opts.target {
                Target::Time(t) => {
                    if *t > Utc::now() {
                        bail!("target time {} is in the future", target::pg_time(t));
                    }
                    reachable.iter().rev().find(|m| m.stop_time <= *t).with_context(|| {
                        format!(
                            "target time {} is before the earliest backup, {}, which can recover to {} at the earliest",
                            target::pg_time(t),
                            earliest.id,
                            earliest.stop_time.to_rfc3339()
                        )
                    })?
                }
                Target::Lsn(l) => reachable
                    .iter()
                    .rev()
                    .find(|m| m.stop().is_ok_and(|s| s <= *l))
                    .with_context(|| {
                        format!(
                            "target LSN {l} is before the end of the earliest backup, {} ({})",
                            earliest.id, earliest.stop_lsn
                        )
                    })?,
                // The newest backup reaches every other target there is.
                Target::Xid(_) | Target::Name(_) | Target::Immediate | Target::Latest => {
                    reachable.last().expect("non-empty")
                }
            };
            (*pick).clone()
        }
    };
    if chosen.encrypted {
        codec.check_key().context("the backup is encrypted")?;
    }
    if opts.delta {
        delta_target(&opts.pgdata, &chosen)?;
    }
    let wal = inv.run_from(tli, chosen.start()?.segno(seg_size));
    let tablespaces = tablespace_dirs(opts, &chosen)?;
    // The server that will run the restored directory: its major is the backup's.
    let major = pg::majors::of_version_num(chosen.pg_version_num.into());
    pg::majors::require(major, &format!("backup {}", chosen.id))?;
    let bin_dir = pg::server_bin::server_bin_dir(major, &opts.postgres)
        .with_context(|| format!("backup {} is of PostgreSQL {major}", chosen.id));
    if opts.start {
        bin_dir.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    }
    let bin_dir = bin_dir.map_err(|e| format!("{e:#}"));
    match &opts.target {
        Target::Time(t) => {
            if *t < chosen.stop_time {
                bail!("target time {} is before backup {} ended ({}); choose another backup or a later time", target::pg_time(t), chosen.id, chosen.stop_time.to_rfc3339());
            }
            if let Some(at) = wal.last_archived {
                if beyond_archive(t, &at) {
                    bail!(
                        "target time {} is after the end of the archived WAL (last segment {} stored {}); later WAL is still only on the server: run select pg_switch_wal() there, wait for the archiver, and retry, or use --target latest",
                        target::pg_time(t),
                        wal.last.map(|s| s.to_string()).unwrap_or_default(),
                        at.to_rfc3339()
                    );
                }
            }
        }
        Target::Lsn(l) => {
            if *l > wal.end_lsn {
                bail!(
                    "target LSN {l} is after the end of the archived WAL ({}) on timeline {tli}",
                    wal.end_lsn
                );
            }
        }
        // Where these lie is known only once replay meets them (recover::end checks).
        Target::Xid(_) | Target::Name(_) | Target::Immediate | Target::Latest => {}
    }
    Ok(Plan {
        backup: chosen,
        timeline: tli,
        wal,
        tablespaces,
        major,
        bin_dir,
    })
}

/// Where each tablespace of `m` goes. A directory outside `--pgdata` is never
/// cleared, so it must be empty or absent; an unmapped tablespace whose original
/// location exists here is refused (it may be production's, under a running
/// server), naming the `--tablespace-map` that would do.
fn tablespace_dirs(opts: &Options, m: &Manifest) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for ts in &m.tablespaces {
        // A delta restore writes over the copy's own tablespace directory,
        // where its pg_tblspc link points, or where --tablespace-map says.
        if opts.delta {
            if let Some(dir) = opts.tablespace_map.get(&ts.oid) {
                out.insert(ts.oid.clone(), dir.clone());
                continue;
            }
            if let Some(dir) = copy_tablespace(&opts.pgdata, &ts.oid) {
                let resolve =
                    |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                // A copy made with cp of a running cluster's directory links
                // to that cluster's tablespace: never written over unasked.
                if resolve(&dir) == resolve(Path::new(&ts.path)) {
                    bail!(
                        "--delta: tablespace {} of {} is at its original location {}, which may be a running cluster's; if it is this copy's own, say so: --tablespace-map {}={}",
                        ts.oid,
                        opts.pgdata.display(),
                        ts.path,
                        ts.oid,
                        ts.path
                    );
                }
                if !dir.is_dir() {
                    bail!(
                        "--delta: tablespace {} of {} points to {}, which is not a directory; give --tablespace-map {}=/a/directory",
                        ts.oid,
                        opts.pgdata.display(),
                        dir.display(),
                        ts.oid
                    );
                }
                out.insert(ts.oid.clone(), dir);
                continue;
            }
        }
        let dir = match (opts.tablespace_map.get(&ts.oid), &opts.tablespace_root) {
            (Some(d), _) => d.clone(),
            (None, Some(root)) => root.join(&ts.oid),
            (None, None) => {
                let original = PathBuf::from(&ts.path);
                if std::fs::symlink_metadata(&original).is_ok() {
                    bail!(
                        "tablespace {} would be restored to its original location {}, which exists on this host (it may belong to a running cluster); add --tablespace-map {}=/an/empty/directory (or --tablespace-map {}={} to restore there once it is empty)",
                        ts.oid, ts.path, ts.oid, ts.oid, ts.path
                    );
                }
                original
            }
        };
        if !is_within(&dir, &opts.pgdata) {
            ensure_empty(&dir, false, false, &format!("tablespace {} directory", ts.oid))
                .map_err(|_| anyhow::anyhow!(
                    "tablespace {} directory {} is not empty; walvault never clears a directory outside --pgdata (not even with --overwrite): empty it yourself or give --tablespace-map {}=/an/empty/directory",
                    ts.oid, dir.display(), ts.oid
                ))?;
        }
        out.insert(ts.oid.clone(), dir);
    }
    Ok(out)
}

/// Where the copy in `pgdata` keeps tablespace `oid`: its pg_tblspc link, or
/// (a restore not started yet) the line of its tablespace_map.
fn copy_tablespace(pgdata: &Path, oid: &str) -> Option<PathBuf> {
    if let Ok(to) = std::fs::read_link(pgdata.join("pg_tblspc").join(oid)) {
        return Some(pgdata.join("pg_tblspc").join(to));
    }
    let map = std::fs::read_to_string(pgdata.join("tablespace_map")).ok()?;
    map.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(o, _)| *o == oid)
        .map(|(_, dir)| PathBuf::from(dir))
}

/// A delta restore writes over a copy of the backup's own cluster only.
fn delta_target(pgdata: &Path, m: &Manifest) -> Result<()> {
    let empty = std::fs::read_dir(pgdata).map_or(true, |mut d| d.next().is_none());
    if empty {
        return Ok(());
    }
    let theirs = pg::control::system_identifier(pgdata).with_context(|| {
        format!(
            "--delta: {} is not a data directory walvault can read (no global/pg_control); use --overwrite to replace it",
            pgdata.display()
        )
    })?;
    if theirs.to_string() != m.system_identifier {
        bail!(
            "--delta: {} belongs to cluster {theirs}, backup {} to cluster {}; delta restore only writes over a copy of the same cluster (use --overwrite to replace it)",
            pgdata.display(),
            m.id,
            m.system_identifier
        );
    }
    Ok(())
}

/// Whether `dir` lies inside `root` (both resolved as far as they exist).
fn is_within(dir: &Path, root: &Path) -> bool {
    let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    resolve(dir).starts_with(resolve(root))
}

/// Refuses a non-empty `dir` unless `overwrite`; with `clear`, also empties it
/// (only once nothing can be refused any more).
fn ensure_empty(dir: &Path, overwrite: bool, clear: bool, what: &str) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    if entries == 0 {
        return Ok(());
    }
    if !overwrite {
        bail!(
            "{what} {} is not empty; recovery never overwrites data unless told to (--overwrite)",
            dir.display()
        );
    }
    if clear {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// The recovery settings, as walvault's one block in postgresql.auto.conf (it
/// is read last), and recovery.signal. Every recovery_target* key is written,
/// the ones not asked for empty, so no setting in postgresql.conf adds a target.
fn write_settings(opts: &Options, plan: &Plan, isolation: &[String]) -> Result<()> {
    let cmd = restore_command(opts)?;
    let end_cmd = format!("{cmd} wal-prefetch --clean");
    let fetch_cmd = format!("{cmd} wal-fetch %f %p");
    let mut lines = vec![
        format!(
            "# {}: backup {}, target {}",
            Utc::now().to_rfc3339(),
            plan.backup.id,
            opts.target.describe()
        ),
        format!("restore_command = {}", target::quote(&fetch_cmd)),
        // The prefetch spool goes when recovery ends.
        format!("recovery_end_command = {}", target::quote(&end_cmd)),
        format!(
            "recovery_target_timeline = {}",
            target::quote(
                &opts
                    .timeline
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "latest".into())
            )
        ),
    ];
    for (k, v) in opts.target.settings() {
        lines.push(format!("{k} = {v}"));
    }
    lines.push(format!(
        "recovery_target_inclusive = {}",
        if opts.exclusive { "off" } else { "on" }
    ));
    lines.push(format!(
        "recovery_target_action = {}",
        target::quote(opts.action.as_str())
    ));
    lines.extend(isolation.iter().cloned());
    if let Some(s) = &opts.standby {
        // A member of the cluster: it keeps production's archiving (a standby
        // archives only with archive_mode = always, and does once promoted).
        let mut replaced = Vec::new();
        if let Some(c) = &s.primary_conninfo {
            lines.push(format!("primary_conninfo = {}", target::quote(c)));
            replaced.push("primary_conninfo");
        }
        if let Some(slot) = &s.primary_slot_name {
            lines.push(format!("primary_slot_name = {}", target::quote(slot)));
            replaced.push("primary_slot_name");
        }
        return settings::write(&opts.pgdata, &lines, "standby.signal", &replaced);
    }
    if !opts.archive {
        // A restored copy must not act on production: no new timeline pushed
        // into its repository, no subscription pulling from (and advancing the
        // slots of) its publishers. --archive when this cluster becomes the primary.
        lines.push("archive_mode = off".into());
        lines.push("max_logical_replication_workers = 0".into());
    }
    settings::write(&opts.pgdata, &lines, "recovery.signal", &[])
}

/// `walvault` as restore_command runs it: this binary, the config file in use
/// and the settings this run took from its environment, each quoted for the
/// shell. No secret: credentials come from the AWS chain or the identity file.
fn restore_command(opts: &Options) -> Result<String> {
    let exe = std::env::current_exe().context("cannot locate the walvault binary")?;
    let mut words = vec![settings::shell_quote(&exe.display().to_string())];
    if let Some(c) = &opts.config_file {
        let abs = std::fs::canonicalize(c).unwrap_or_else(|_| c.clone());
        words.push("--config".into());
        words.push(settings::shell_quote(&abs.display().to_string()));
    }
    for kv in &opts.carry {
        words.push("--set".into());
        words.push(settings::shell_quote(kv));
    }
    Ok(words.join(" "))
}

pub struct End {
    pub lsn: String,
    pub timeline: i32,
    pub last_commit: Option<DateTime<Utc>>,
}

/// Waits until recovery has reached its target (per the action), or fails with
/// the server's own words when it stopped.
async fn wait(
    opts: &Options,
    server: &pg::postmaster::Server,
    log: &Path,
    major: u32,
) -> Result<End> {
    // pg_get_wal_replay_pause_state() came in 14; 13 has only the boolean, set
    // once replay has paused at the target.
    let pause_state = if major >= 14 {
        "pg_get_wal_replay_pause_state()"
    } else {
        "case when pg_is_wal_replay_paused() then 'paused' else 'not paused' end"
    };
    let conninfo = conninfo(opts);
    let mut last_note = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        if server.exited().is_some() {
            if opts.action == Action::Shutdown && log_text.contains("recovery stopping") {
                return Ok(End {
                    lsn: log_line(&log_text, "redo done at ").unwrap_or_default(),
                    timeline: 0,
                    last_commit: None,
                });
            }
            bail!(
                "PostgreSQL stopped during recovery: {}",
                pg::postmaster::words(log)
            );
        }
        let Ok(client) = pg::conn::connect(Some(&conninfo)).await else {
            if last_note.elapsed() > Duration::from_secs(10) {
                tracing::info!("recovery in progress (server not yet consistent)");
                last_note = Instant::now();
            }
            continue;
        };
        let sql = format!(
            "select pg_is_in_recovery(), \
             case when pg_is_in_recovery() then {pause_state} else 'promoted' end, \
             coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text, \
             pg_last_xact_replay_timestamp(), \
             case when pg_is_in_recovery() then (select timeline_id from pg_control_checkpoint()) \
                  else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end"
        );
        let row = client.query_one(&sql, &[]).await?;
        let (in_recovery, state): (bool, String) = (row.get(0), row.get(1));
        let done = match opts.action {
            // Without a target there is nothing to pause at: replay ends, the server promotes.
            Action::Pause if opts.target != Target::Latest => state == "paused",
            Action::Pause | Action::Promote | Action::Shutdown => !in_recovery,
        };
        if done {
            return Ok(End {
                lsn: row.get(2),
                timeline: row.get(4),
                last_commit: row.get(3),
            });
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            tracing::info!(
                "recovery in progress: replayed to {}",
                row.get::<_, String>(2)
            );
            last_note = Instant::now();
        }
    }
}

/// Whether a target time lies beyond WAL whose last segment was stored at `at`.
/// S3 reports LastModified to the whole second: the segment was stored up to a
/// second after the time shown, with commits up to then.
fn beyond_archive(t: &DateTime<Utc>, at: &DateTime<Utc>) -> bool {
    *t >= *at + chrono::Duration::seconds(1)
}

fn log_line(log: &str, prefix: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.find(prefix).map(|i| {
            l[i + prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_times_are_whole_seconds_on_s3() {
        let at = target::parse_time("2026-11-22 06:44:52+00").unwrap();
        let commit = target::parse_time("2026-11-22 06:44:52.057747+00").unwrap();
        assert!(
            !beyond_archive(&commit, &at),
            "a commit within the stored second is reachable"
        );
        let later = target::parse_time("2026-11-22 06:44:53.5+00").unwrap();
        assert!(beyond_archive(&later, &at));
    }
}
