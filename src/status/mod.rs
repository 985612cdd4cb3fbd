//! `status`: is the cluster recoverable right now, and how much would be lost?
//! For a DBA at a terminal, `--json` for scripts, `--prometheus FILE` for a
//! node_exporter textfile (written atomically).
//!
//! Two sources, each optional: the repository (last archived segment, backups,
//! recoverable window, size) and PostgreSQL (archive backlog from the data
//! directory's `.ready` files or `pg_ls_archive_statusdir()`, `pg_stat_archiver`,
//! and wal-receive's slot and walsender: [`receiver`]).
//! A source that cannot be reached is reported as down; the rest is still written,
//! because "S3 is down" is exactly when the backlog figures matter.

pub mod receiver;

use crate::backup;
use crate::codec::Codec;
use crate::config::Config;
use crate::store::Store;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every metric `--prometheus` writes: name, help. The alert rules in
/// examples/ are checked against this list.
pub const METRICS: &[(&str, &str)] = &[
    (
        "walvault_status_time_seconds",
        "When walvault status ran (Unix time).",
    ),
    (
        "walvault_repository_up",
        "1 when the repository could be read.",
    ),
    (
        "walvault_last_archived_time_seconds",
        "When the newest WAL segment in the repository was stored.",
    ),
    (
        "walvault_repository_size_bytes",
        "Bytes stored in the repository.",
    ),
    ("walvault_backups", "Complete backups in the repository."),
    (
        "walvault_last_backup_time_seconds",
        "When the newest complete backup ended.",
    ),
    (
        "walvault_last_backup_stored_bytes",
        "Stored (compressed, encrypted) size of the newest backup.",
    ),
    (
        "walvault_last_backup_raw_bytes",
        "Size of the data directory in the newest backup.",
    ),
    (
        "walvault_window_start_time_seconds",
        "Start of the recoverable window (end of the oldest restorable backup).",
    ),
    (
        "walvault_window_end_time_seconds",
        "End of the recoverable window (when the last contiguous segment was stored).",
    ),
    (
        "walvault_wal_gap",
        "1 when a WAL segment is missing with later ones present: recovery stops before it.",
    ),
    (
        "walvault_wal_dropped_segments",
        "WAL segments push.max_backlog dropped from the archive on purpose (recorded under gaps/): recovery cannot pass them.",
    ),
    (
        "walvault_timeline",
        "The newest timeline in the repository: it grows at each failover or promoted recovery.",
    ),
    ("walvault_dumps", "Complete logical dumps in the repository."),
    (
        "walvault_last_dump_time_seconds",
        "When the newest complete logical dump finished.",
    ),
    (
        "walvault_last_drill_time_seconds",
        "When the newest restore drill kept in the repository finished.",
    ),
    (
        "walvault_last_drill_passed",
        "1 when the newest restore drill passed, 0 when it failed.",
    ),
    (
        "walvault_last_passed_drill_time_seconds",
        "When the newest restore drill that passed finished.",
    ),
    (
        "walvault_last_drill_rto_seconds",
        "RTO measured by the newest restore drill (plan, restore, recovery).",
    ),
    (
        "walvault_postgres_up",
        "1 when PostgreSQL's archive state could be read.",
    ),
    (
        "walvault_archive_ready_count",
        "WAL files waiting for archive_command (.ready).",
    ),
    (
        "walvault_archive_oldest_ready_age_seconds",
        "Age of the oldest WAL file waiting to be archived: the live RPO.",
    ),
    (
        "walvault_archiver_failed_count",
        "pg_stat_archiver.failed_count since the statistics reset.",
    ),
    (
        "walvault_archiver_last_failed_time_seconds",
        "pg_stat_archiver.last_failed_time.",
    ),
    (
        "walvault_archiver_last_archived_time_seconds",
        "pg_stat_archiver.last_archived_time.",
    ),
    (
        "walvault_receive_slot_active",
        "1 when wal-receive is connected to its slot (receive.slot), 0 when the slot is unused; absent without the slot.",
    ),
    (
        "walvault_receive_lag_bytes",
        "WAL the server has written that the repository does not hold yet (wal-receive): what a failure now would lose.",
    ),
    (
        "walvault_receive_lag_seconds",
        "pg_stat_replication.flush_lag of wal-receive: the RPO in seconds while it is connected.",
    ),
    (
        "walvault_receive_slot_retained_bytes",
        "WAL the server keeps on its disk for wal-receive's slot.",
    ),
    (
        "walvault_receive_slot_safe_wal_bytes",
        "WAL the server can still write before the slot loses WAL (max_slot_wal_keep_size); absent when unlimited.",
    ),
    (
        "walvault_receive_slot_lost",
        "1 when wal-receive's slot has lost WAL the repository does not hold (wal_status lost).",
    ),
];

#[derive(Serialize, Default, Debug)]
pub struct Status {
    pub time: DateTime<Utc>,
    pub repository: String,
    pub repository_up: bool,
    pub repository_error: Option<String>,
    pub last_archived_segment: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub repository_size_bytes: Option<u64>,
    pub backups: Option<usize>,
    pub last_backup_id: Option<String>,
    pub last_backup_time: Option<DateTime<Utc>>,
    pub last_backup_stored_bytes: Option<u64>,
    pub last_backup_raw_bytes: Option<u64>,
    pub window_start: Option<DateTime<Utc>>,
    pub window_end: Option<DateTime<Utc>>,
    pub wal_gap: Option<String>,
    /// Segments push.max_backlog dropped on purpose, as recorded in the
    /// repository (the newest named in `wal_gap_dropped` when it is the gap).
    pub wal_dropped_segments: Option<u64>,
    pub wal_gap_dropped: Option<String>,
    /// The newest timeline in the repository, and how it began (a failover).
    pub timeline: Option<u32>,
    pub timeline_switch: Option<crate::wal::switches::Switch>,
    pub dumps: Option<usize>,
    pub last_dump_id: Option<String>,
    pub last_dump_time: Option<DateTime<Utc>>,
    pub last_dump_stored_bytes: Option<u64>,
    pub last_drill_id: Option<String>,
    pub last_drill_time: Option<DateTime<Utc>>,
    pub last_drill_passed: Option<bool>,
    pub last_drill_rto_seconds: Option<f64>,
    pub last_passed_drill_time: Option<DateTime<Utc>>,
    pub postgres_up: bool,
    pub postgres_error: Option<String>,
    /// Where the backlog figures came from.
    pub backlog_source: Option<String>,
    pub ready_count: Option<u64>,
    pub oldest_ready: Option<String>,
    pub oldest_ready_age_seconds: Option<f64>,
    pub archiver_failed_count: Option<i64>,
    pub archiver_last_failed_wal: Option<String>,
    pub archiver_last_failed_time: Option<DateTime<Utc>>,
    pub archiver_last_archived_wal: Option<String>,
    pub archiver_last_archived_time: Option<DateTime<Utc>>,
    /// wal-receive's slot and connection; `None` when the server has no such slot.
    pub receiver: Option<receiver::Receiver>,
    pub receiver_error: Option<String>,
}

pub struct Options {
    pub pgdata: Option<PathBuf>,
    pub json: bool,
    pub prometheus: Option<PathBuf>,
}

/// Returns whether both sources could be read.
pub async fn run(cfg: &Config, store: &dyn Store, codec: &Codec, opts: Options) -> Result<bool> {
    let mut st = Status {
        time: Utc::now(),
        repository: store.locate(""),
        ..Default::default()
    };
    if let Err(e) = read_repository(store, codec, &mut st).await {
        st.repository_error = Some(format!("{e:#}"));
    }
    if let Err(e) = read_postgres(cfg, opts.pgdata.as_deref(), &mut st).await {
        st.postgres_error = Some(format!("{e:#}"));
    }
    if let Some(path) = &opts.prometheus {
        // The collector never reads half a file; the hidden temporary name is ignored.
        crate::files::write_atomically(path, prometheus(&st).as_bytes())?;
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else if opts.prometheus.is_none() {
        print(&st);
    }
    Ok(st.repository_up && st.postgres_up)
}

async fn read_repository(store: &dyn Store, codec: &Codec, st: &mut Status) -> Result<()> {
    crate::repo::require(store).await?;
    let (listing, inv) = crate::backup::list_with_wal_cached(store, codec).await?;
    // From the listings already made: no second walk of the repository.
    let backups: u64 = listing.objects.values().flatten().map(|o| o.size).sum();
    st.repository_size_bytes = Some(backups + inv.bytes());
    if let Some((s, stored)) = inv.segments.newest() {
        st.last_archived_segment = Some(s.to_string());
        st.last_archived_time = stored;
    }
    let tli = inv.latest_timeline();
    st.timeline = Some(tli);
    st.timeline_switch = crate::wal::switches::of(&inv)
        .into_iter()
        .find(|s| s.timeline == tli);
    st.backups = Some(listing.complete.len());
    if let Some(m) = listing.complete.last() {
        st.last_backup_id = Some(m.id.clone());
        st.last_backup_time = Some(m.stop_time);
        st.last_backup_stored_bytes = Some(m.stored_bytes);
        st.last_backup_raw_bytes = Some(m.raw_bytes);
    }
    let dropped = crate::wal::backlog::recorded(store).await?;
    st.wal_dropped_segments = Some(dropped.len() as u64);
    if let Some(mut w) = backup::catalog::window(&listing, &inv) {
        w.mark_dropped(&dropped);
        st.window_start = Some(w.from);
        st.window_end = w.to;
        st.wal_gap = w.gap;
        st.wal_gap_dropped = w.gap_dropped.as_ref().map(backup::catalog::describe_drop);
    }
    let dumps = crate::dump::list(store).await?;
    st.dumps = Some(dumps.dumps.len());
    if let Some(m) = dumps.dumps.last() {
        st.last_dump_id = Some(m.id.clone());
        st.last_dump_time = Some(m.finished_at);
        st.last_dump_stored_bytes = Some(m.stored_bytes());
    }
    st.repository_size_bytes = st
        .repository_size_bytes
        .map(|b| b + dumps.dumps.iter().map(|m| m.stored_bytes()).sum::<u64>());
    // Drills since the last pass; a year of monthly ones at most.
    let (newest, passed) = crate::drill::history::latest(store, 12).await?;
    if let Some(d) = newest {
        st.last_drill_id = Some(d.drill_id.clone());
        st.last_drill_time = d.finished_at;
        st.last_drill_passed = Some(d.passed());
        st.last_drill_rto_seconds = d.timings.rto_seconds;
    }
    st.last_passed_drill_time = passed.and_then(|d| d.finished_at);
    st.repository_up = true;
    Ok(())
}

async fn read_postgres(cfg: &Config, pgdata: Option<&Path>, st: &mut Status) -> Result<()> {
    if let Some(dir) = pgdata {
        let (count, oldest) = ready_files(dir)?;
        st.backlog_source = Some(format!("{}/pg_wal/archive_status", dir.display()));
        set_backlog(st, count, oldest);
    }
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        crate::pg::conn::connect(cfg.postgres.conninfo.as_deref()),
    )
    .await
    .context("PostgreSQL did not answer within 10 s")??;
    let row = client
        .query_one(
            "select archived_count, last_archived_wal, \
                    extract(epoch from last_archived_time)::float8, \
                    failed_count, last_failed_wal, extract(epoch from last_failed_time)::float8 \
             from pg_stat_archiver",
            &[],
        )
        .await
        .context("reading pg_stat_archiver")?;
    let time = |i: usize| -> Option<DateTime<Utc>> {
        row.get::<_, Option<f64>>(i)
            .and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64))
    };
    st.archiver_last_archived_wal = row.get(1);
    st.archiver_last_archived_time = time(2);
    st.archiver_failed_count = Some(row.get(3));
    st.archiver_last_failed_wal = row.get(4);
    st.archiver_last_failed_time = time(5);
    match receiver::read(&client, &cfg.receive.slot).await {
        Ok(r) => st.receiver = r,
        Err(e) => st.receiver_error = Some(format!("{e:#}")),
    }
    if pgdata.is_none() {
        // pg_ls_archive_statusdir needs superuser or pg_monitor.
        let row = client
            .query_one(
                "select count(*), min(name), extract(epoch from min(modification))::float8 \
                 from pg_ls_archive_statusdir() where name like '%.ready'",
                &[],
            )
            .await
            .context("reading the archive status directory (grant pg_monitor, or give --pgdata)")?;
        let n: i64 = row.get(0);
        let oldest = row
            .get::<_, Option<f64>>(2)
            .map(|s| (row.get::<_, Option<String>>(1).unwrap_or_default(), s));
        st.backlog_source = Some("pg_ls_archive_statusdir()".into());
        set_backlog(
            st,
            n as u64,
            oldest.map(|(name, s)| (name.trim_end_matches(".ready").to_string(), s)),
        );
    }
    st.postgres_up = true;
    Ok(())
}

fn set_backlog(st: &mut Status, count: u64, oldest: Option<(String, f64)>) {
    st.ready_count = Some(count);
    let now = st.time.timestamp_millis() as f64 / 1000.0;
    st.oldest_ready_age_seconds = Some(oldest.as_ref().map_or(0.0, |(_, t)| (now - t).max(0.0)));
    st.oldest_ready = oldest.map(|(n, _)| n);
}

/// `.ready` files in the data directory: how many, and the oldest (name, mtime).
fn ready_files(pgdata: &Path) -> Result<(u64, Option<(String, f64)>)> {
    let dir = pgdata.join("pg_wal/archive_status");
    let mut count = 0;
    let mut oldest: Option<(String, f64)> = None;
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(wal) = name.strip_suffix(".ready") else {
            continue;
        };
        // Archived meanwhile: the file was renamed to .done between listing and stat.
        let Ok(meta) = e.metadata() else { continue };
        let t = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        count += 1;
        if oldest.as_ref().is_none_or(|(_, o)| t < *o) {
            oldest = Some((wal.to_string(), t));
        }
    }
    Ok((count, oldest))
}

fn secs(t: &Option<DateTime<Utc>>) -> Option<f64> {
    t.map(|t| t.timestamp_millis() as f64 / 1000.0)
}

/// The node_exporter textfile.
pub fn prometheus(st: &Status) -> String {
    let flag = |b: bool| Some(if b { 1.0 } else { 0.0 });
    let values: Vec<Option<f64>> = vec![
        secs(&Some(st.time)),
        flag(st.repository_up),
        secs(&st.last_archived_time),
        st.repository_size_bytes.map(|v| v as f64),
        st.backups.map(|v| v as f64),
        secs(&st.last_backup_time),
        st.last_backup_stored_bytes.map(|v| v as f64),
        st.last_backup_raw_bytes.map(|v| v as f64),
        secs(&st.window_start),
        secs(&st.window_end),
        st.repository_up
            .then(|| if st.wal_gap.is_some() { 1.0 } else { 0.0 }),
        st.wal_dropped_segments.map(|v| v as f64),
        st.timeline.map(f64::from),
        st.dumps.map(|v| v as f64),
        secs(&st.last_dump_time),
        secs(&st.last_drill_time),
        st.last_drill_passed.and_then(flag),
        secs(&st.last_passed_drill_time),
        st.last_drill_rto_seconds,
        flag(st.postgres_up),
        st.ready_count.map(|v| v as f64),
        st.oldest_ready_age_seconds,
        st.archiver_failed_count.map(|v| v as f64),
        secs(&st.archiver_last_failed_time),
        secs(&st.archiver_last_archived_time),
        st.receiver.as_ref().and_then(|r| flag(r.active)),
        st.receiver
            .as_ref()
            .and_then(|r| r.lag_bytes.map(|v| v as f64)),
        st.receiver.as_ref().and_then(|r| r.lag_seconds),
        st.receiver
            .as_ref()
            .and_then(|r| r.retained_bytes.map(|v| v as f64)),
        st.receiver
            .as_ref()
            .and_then(|r| r.safe_wal_bytes.map(|v| v as f64)),
        st.receiver
            .as_ref()
            .and_then(|r| flag(r.wal_status.as_deref() == Some("lost"))),
    ];
    assert_eq!(values.len(), METRICS.len(), "a value for each metric");
    let label = st.repository.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::new();
    for ((name, help), v) in METRICS.iter().zip(values) {
        // An unknown value is left out rather than written as a misleading 0.
        let Some(v) = v else { continue };
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{repo=\"{label}\"}} {v}\n"
        ));
    }
    out
}

fn print(st: &Status) {
    let ago = |t: &Option<DateTime<Utc>>| {
        t.map(|t| {
            format!(
                "{} ({} ago)",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                human((st.time - t).num_seconds())
            )
        })
        .unwrap_or_else(|| "never".into())
    };
    println!("repository     {}", st.repository);
    match &st.repository_error {
        Some(e) => println!("  UNREACHABLE: {e}"),
        None => {
            println!(
                "  last archived  {} at {}",
                st.last_archived_segment.as_deref().unwrap_or("none"),
                ago(&st.last_archived_time)
            );
            if let Some(t) = st.timeline {
                println!(
                    "  timeline       {t}{}",
                    st.timeline_switch
                        .as_ref()
                        .map(|s| format!(": {}", crate::wal::switches::describe(s)))
                        .unwrap_or_default()
                );
            }
            println!(
                "  last backup    {} ended {}, {} MiB stored",
                st.last_backup_id.as_deref().unwrap_or("none"),
                ago(&st.last_backup_time),
                st.last_backup_stored_bytes.unwrap_or(0) >> 20
            );
            println!(
                "  window         {} .. {}{}",
                st.window_start
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "none".into()),
                st.window_end
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "-".into()),
                st.wal_gap
                    .as_ref()
                    .map(|g| format!(
                        "  WAL GAP at {g}{}",
                        st.wal_gap_dropped
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default()
            );
            if let Some(id) = &st.last_dump_id {
                println!(
                    "  last dump      {id} finished {}, {} MiB stored ({} dumps)",
                    ago(&st.last_dump_time),
                    st.last_dump_stored_bytes.unwrap_or(0) >> 20,
                    st.dumps.unwrap_or(0)
                );
            }
            println!(
                "  size           {} MiB in {} backups, WAL and {} dumps",
                st.repository_size_bytes.unwrap_or(0) >> 20,
                st.backups.unwrap_or(0),
                st.dumps.unwrap_or(0)
            );
            match (&st.last_drill_id, st.last_drill_passed) {
                (Some(id), Some(passed)) => println!(
                    "  last drill     {id} {} at {}, RTO {}; last passed {}",
                    if passed { "PASSED" } else { "FAILED" },
                    ago(&st.last_drill_time),
                    st.last_drill_rto_seconds
                        .map(|s| format!("{s:.0} s"))
                        .unwrap_or_else(|| "-".into()),
                    ago(&st.last_passed_drill_time)
                ),
                _ => println!("  last drill     none kept in the repository (walvault drill)"),
            }
        }
    }
    println!("postgresql");
    if let (Some(n), Some(age)) = (st.ready_count, st.oldest_ready_age_seconds) {
        println!(
            "  backlog        {n} file(s) waiting{} (from {})",
            st.oldest_ready
                .as_ref()
                .map(|o| format!(", oldest {o} for {}", human(age as i64)))
                .unwrap_or_default(),
            st.backlog_source.as_deref().unwrap_or("?")
        );
    }
    if let Some(e) = &st.postgres_error {
        println!("  UNREACHABLE: {e}");
    }
    if let Some(f) = st.archiver_failed_count {
        println!(
            "  archiver       last archived {} at {}; {f} failure(s), last {} at {}",
            st.archiver_last_archived_wal.as_deref().unwrap_or("none"),
            ago(&st.archiver_last_archived_time),
            st.archiver_last_failed_wal.as_deref().unwrap_or("none"),
            ago(&st.archiver_last_failed_time)
        );
    }
    for line in st.receiver.iter().flat_map(receiver::describe) {
        println!("  {line}");
    }
    if let Some(e) = &st.receiver_error {
        println!("  receiver       cannot be read: {e}");
    }
}

fn human(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textfile_has_one_sample_per_known_metric() {
        let st = Status {
            time: "2026-11-22T10:00:00Z".parse().unwrap(),
            repository: "s3://b/p\"x".into(),
            repository_up: false,
            postgres_up: true,
            ready_count: Some(7),
            oldest_ready_age_seconds: Some(93.5),
            ..Default::default()
        };
        let text = prometheus(&st);
        assert!(
            text.contains("walvault_archive_ready_count{repo=\"s3://b/p\\\"x\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("walvault_repository_up{repo=\"s3://b/p\\\"x\"} 0\n"));
        assert!(text
            .contains("walvault_archive_oldest_ready_age_seconds{repo=\"s3://b/p\\\"x\"} 93.5\n"));
        // Unknown values are absent, not zero.
        assert!(!text.contains("walvault_last_backup_time_seconds{"));
        assert!(!text.contains("walvault_wal_gap{"));
        assert!(!text.contains("walvault_receive_slot_active{"), "no slot");
        let st = Status {
            receiver: Some(receiver::Receiver {
                slot: "walvault".into(),
                active: false,
                retained_bytes: Some(4096),
                lag_bytes: Some(4096),
                ..Default::default()
            }),
            ..st
        };
        let text = prometheus(&st);
        assert!(text.contains("walvault_receive_slot_active{repo=\"s3://b/p\\\"x\"} 0\n"));
        assert!(text.contains("walvault_receive_lag_bytes{repo=\"s3://b/p\\\"x\"} 4096\n"));
        assert!(text.contains("walvault_receive_slot_lost{repo=\"s3://b/p\\\"x\"} 0\n"));
        assert!(
            !text.contains("walvault_receive_lag_seconds{"),
            "unknown when down"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            assert!(METRICS.iter().any(|(n, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn ready_files_count_and_oldest() {
        let (d, st) = crate::testing::temp_path("pg_wal/archive_status");
        std::fs::create_dir_all(&st).unwrap();
        for n in [
            "000000010000000000000003.ready",
            "000000010000000000000002.done",
            "000000010000000000000004.ready",
        ] {
            std::fs::write(st.join(n), "").unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(300);
        std::fs::File::options()
            .write(true)
            .open(st.join("000000010000000000000003.ready"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let (n, oldest) = ready_files(d.path()).unwrap();
        assert_eq!(n, 2);
        assert_eq!(oldest.unwrap().0, "000000010000000000000003");
    }
}
