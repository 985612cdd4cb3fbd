//! `drill`: proves a restore. Restores a backup into a scratch directory, runs
//! PostgreSQL there until the target, checks the data, measures RTO and RPO,
//! writes a report (Markdown and JSON, optionally also into the repository
//! under `drills/`) and removes the scratch cluster, also on failure or interrupt.

pub mod checks;
mod dump_drill;
pub mod history;
pub mod report;

use crate::codec::Codec;
use crate::config::Config;
use crate::files::write_atomically;
use crate::pg;
use crate::recover::{self, target::Target};
use crate::scratch::{self, Scratch, Source};
use crate::store::{Class, Store};
use anyhow::{bail, Context, Result};
use checks::{CheckResult, Status, UserCheck};
use chrono::Utc;
use report::Report;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub struct Options {
    pub source: Source,
    /// Drill a logical dump instead of a backup (`--dump ID`).
    pub dump: Option<String>,
    /// The user's SQL file of named checks.
    pub checks: Option<PathBuf>,
    /// Where the scratch directory is made.
    pub scratch_root: PathBuf,
    /// Where the reports are written.
    pub report_dir: PathBuf,
    pub upload: bool,
    pub amcheck: bool,
    pub operator: Option<String>,
}

/// Time limit of one user check.
const CHECK_TIMEOUT_SECS: u64 = 600;

/// Runs the drill; `Ok(false)` when a check failed or an objective was missed
/// (the report says which), `Err` when it could not run at all.
pub async fn run(
    cfg: &Config,
    store: Arc<dyn Store>,
    codec: &Codec,
    opts: Options,
) -> Result<bool> {
    // Everything that can be refused is refused before anything is restored.
    let user_checks = match &opts.checks {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read checks file {}", p.display()))?;
            checks::parse(&text, &p.display().to_string())?
        }
        None => Vec::new(),
    };
    if unsafe { libc::geteuid() } == 0 {
        bail!("drill starts PostgreSQL, which refuses to run as root; run it as the cluster's OS user (e.g. postgres)");
    }
    writable_dir(&opts.report_dir)?;

    let started = Utc::now();
    let drill_id = started.format("%Y%m%dT%H%M%SZ").to_string();
    let mut rep = Report {
        format: 1,
        drill_id: drill_id.clone(),
        result: "failed".into(),
        started_at: started,
        finished_at: None,
        host: crate::host::name(),
        operator: opts
            .operator
            .clone()
            .or_else(|| std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(pg::conn::os_user),
        walvault_version: env!("CARGO_PKG_VERSION").to_string(),
        repository: store.locate(""),
        backup: None,
        dump: None,
        target: report::TargetUsed {
            description: opts.source.target.describe(),
            timeline: opts.source.timeline,
        },
        wal: None,
        recovered: None,
        timings: Default::default(),
        rpo: Default::default(),
        objectives: report::Objectives {
            rto_target_seconds: (cfg.drill.rto_target_seconds > 0)
                .then_some(cfg.drill.rto_target_seconds as u64),
            rpo_target_seconds: (cfg.drill.rpo_target_seconds > 0)
                .then_some(cfg.drill.rpo_target_seconds as u64),
            ..Default::default()
        },
        checks: Vec::new(),
        tables: Vec::new(),
        failures: Vec::new(),
    };

    let t0 = Instant::now();
    // A backup or dump that does not exist or cannot reach the target is bad
    // input, not a failed drill: a clear error and nothing written.
    let scratch = Scratch::create(&opts.scratch_root, "drill", &drill_id)?;
    let drill = Drill {
        cfg,
        codec,
        scratch: &scratch,
        user_checks: &user_checks,
        amcheck: opts.amcheck,
        t0,
    };
    if let Some(id) = &opts.dump {
        let manifest = match dump_drill::prepare(codec, store.as_ref(), id, &opts).await {
            Ok(m) => m,
            Err(e) => {
                drop(scratch);
                return Err(e);
            }
        };
        let outcome = tokio::select! {
            r = dump_drill::run(&drill, store.as_ref(), &manifest, &mut rep) => r,
            sig = scratch::interrupted() => Err(anyhow::anyhow!("interrupted by {sig}")),
        };
        if let Err(e) = outcome {
            let mut msg = format!("{e:#}");
            if let Some(tail) = pg::postmaster::tail(&dump_drill::log_path(&scratch), 3) {
                if !msg.contains("server log") && rep.timings.restore_seconds.is_none() {
                    msg.push_str(&format!(" (server log: {tail})"));
                }
            }
            rep.failures.push(msg);
        }
        drop(scratch);
    } else {
        let ropts = scratch.recover_options(&opts.source, cfg);
        let plan = match recover::plan(store.as_ref(), codec, &ropts).await {
            Ok(p) => p,
            Err(e) => {
                drop(scratch);
                return Err(e);
            }
        };
        let outcome = tokio::select! {
            r = from_backup(&drill, store.clone(), &ropts, &plan, &mut rep) => r,
            sig = scratch::interrupted() => Err(anyhow::anyhow!("interrupted by {sig}")),
        };
        if let Err(e) = outcome {
            // Keep the server's last words before the scratch directory goes.
            let mut msg = format!("{e:#}");
            if rep.recovered.is_none() && !msg.contains("PostgreSQL stopped") {
                if let Some(tail) = pg::postmaster::tail(&recover::log_path(&ropts), 3) {
                    msg.push_str(&format!(" (server log: {tail})"));
                }
            }
            rep.failures.push(msg);
        }
        drop(scratch); // stops the server and removes the directory
    }
    rep.timings.total_seconds = Some(t0.elapsed().as_secs_f64());
    rep.finished_at = Some(Utc::now());
    rep.result = if rep.passed() { "passed" } else { "failed" }.into();

    let json = serde_json::to_vec_pretty(&rep)?;
    let md = rep.to_markdown();
    let base = opts.report_dir.join(format!("walvault-drill-{drill_id}"));
    write_atomically(&base.with_extension("json"), &json)?;
    write_atomically(&base.with_extension("md"), md.as_bytes())?;
    println!(
        "report:   {} and .md",
        base.with_extension("json").display()
    );
    if opts.upload {
        for (name, body) in [("report.json", json), ("report.md", md.into_bytes())] {
            let key = format!("drills/{drill_id}/{name}");
            store
                // Audit evidence: kept as long as permanent backups.
                .put_class(&key, Box::new(std::io::Cursor::new(body)), Class::Permanent)
                .await
                .with_context(|| format!("uploading the report to {}", store.locate(&key)))?;
        }
        println!("uploaded: {}", store.locate(&format!("drills/{drill_id}/")));
    }
    if rep.passed() && rep.dump.is_some() {
        println!(
            "drill PASSED: dump restored in {:.1} s, {} checks",
            rep.timings.rto_seconds.unwrap_or_default(),
            rep.checks.len()
        );
    } else if rep.passed() {
        println!(
            "drill PASSED: RTO {:.1} s, newest WAL {} s old, {} checks",
            rep.timings.rto_seconds.unwrap_or_default(),
            rep.rpo
                .newest_wal_age_seconds
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "?".into()),
            rep.checks.len()
        );
    } else {
        println!("drill FAILED:");
        for f in &rep.failures {
            println!("  - {f}");
        }
    }
    Ok(rep.passed())
}

/// What a drill of either kind runs with: the settings, the key, the scratch
/// cluster, the checks asked for and the clock started before planning.
#[derive(Clone, Copy)]
pub(super) struct Drill<'a> {
    pub cfg: &'a Config,
    pub codec: &'a Codec,
    pub scratch: &'a Scratch,
    pub user_checks: &'a [UserCheck],
    pub amcheck: bool,
    pub t0: Instant,
}

/// The drill of a backup; fills `rep` as it goes, so an error or an interrupt
/// still leaves what was measured.
async fn from_backup(
    drill: &Drill<'_>,
    store: Arc<dyn Store>,
    ropts: &recover::Options,
    plan: &recover::Plan,
    rep: &mut Report,
) -> Result<()> {
    let (scratch, t0) = (drill.scratch, drill.t0);
    let b = &plan.backup;
    rep.backup = Some(report::BackupUsed {
        id: b.id.clone(),
        label: b.label.clone(),
        timeline: b.timeline,
        start_lsn: b.start_lsn.clone(),
        stop_lsn: b.stop_lsn.clone(),
        stop_time: b.stop_time,
        raw_bytes: b.raw_bytes,
        stored_bytes: b.stored_bytes,
        encrypted: b.encrypted,
    });
    rep.target.timeline = Some(plan.timeline);
    let first = crate::wal::names::SegmentName::from_segno(
        b.timeline,
        b.start()?.segno(b.wal_segment_size),
        b.wal_segment_size,
    );
    rep.wal = Some(report::WalUsed {
        first_segment: first.to_string(),
        last_segment: plan.wal.last.map(|s| s.to_string()),
        end_lsn: plan.wal.end_lsn.to_string(),
        newest_stored_at: plan.wal.last_archived,
        gap: plan.wal.gap.map(|g| g.to_string()),
    });
    rep.rpo.newest_wal_age_seconds = plan
        .wal
        .last_archived
        .map(|at| (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0);
    println!(
        "drill:    backup {} (ended {}), target {}, scratch {}",
        b.id,
        b.stop_time.to_rfc3339(),
        ropts.target.describe(),
        scratch.dir.display()
    );
    rep.timings.plan_seconds = Some(t0.elapsed().as_secs_f64());

    let t1 = Instant::now();
    let (restored, _) =
        recover::restore_into(drill.cfg, store.clone(), drill.codec, ropts, plan).await?;
    rep.timings.restore_seconds = Some(t1.elapsed().as_secs_f64());
    rep.timings.downloaded_bytes = Some(b.stored_bytes);
    rep.timings.restored_bytes = Some(restored.bytes);
    println!(
        "restored: {} files, {} MiB in {:.1} s",
        restored.files,
        restored.bytes >> 20,
        t1.elapsed().as_secs_f64()
    );
    println!("isolated: no network listener, archive_mode off, logical replication workers off (subscriptions do not run)");

    let t2 = Instant::now();
    let end = recover::start(ropts, plan, &scratch.server_settings()).await?;
    rep.timings.recovery_seconds = Some(t2.elapsed().as_secs_f64());
    rep.timings.rto_seconds = Some(t0.elapsed().as_secs_f64());
    println!(
        "recovered: LSN {} on timeline {}, last replayed commit {} in {:.1} s",
        end.lsn,
        end.timeline,
        end.last_commit
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "none".into()),
        t2.elapsed().as_secs_f64()
    );
    let reference = match &ropts.target {
        Target::Time(t) => Some(*t),
        Target::Latest => plan.wal.last_archived,
        // No time to measure the gap from.
        Target::Lsn(_) | Target::Xid(_) | Target::Name(_) | Target::Immediate => None,
    };
    rep.rpo.target_gap_seconds = match (reference, end.last_commit) {
        (Some(r), Some(c)) => Some((r - c).num_milliseconds().max(0) as f64 / 1000.0),
        _ => None,
    };
    rep.recovered = Some(report::Recovered {
        end_lsn: end.lsn.clone(),
        timeline: end.timeline,
        last_replayed_commit: end.last_commit,
    });
    // Where replay ended, against what was asked (the archive's end for latest).
    let log = std::fs::read_to_string(recover::log_path(ropts)).unwrap_or_default();
    let (status, detail) =
        match recover::end::check(&ropts.target, ropts.exclusive, plan, &end, &log) {
            Ok(what) => (
                Status::Passed,
                format!(
                    "ended at LSN {} on timeline {}: {what}",
                    end.lsn, end.timeline
                ),
            ),
            Err(e) => (Status::Failed, format!("{e:#}")),
        };
    rep.checks.push(CheckResult::builtin(
        "server reaches the target and accepts connections".into(),
        None,
        status,
        detail,
    ));

    let t3 = Instant::now();
    run_checks(drill, rep).await?;
    rep.timings.checks_seconds = Some(t3.elapsed().as_secs_f64());

    conclude(rep);
    Ok(())
}

/// Failed checks and missed objectives become the report's failures.
pub(super) fn conclude(rep: &mut Report) {
    for c in rep.checks.iter().filter(|c| c.status == Status::Failed) {
        let failure = match &c.database {
            Some(db) => format!("check '{}' failed in {db}: {}", c.name, c.detail),
            None => format!("check '{}' failed: {}", c.name, c.detail),
        };
        rep.failures.push(failure);
    }
    let o = &mut rep.objectives;
    if let (Some(target), Some(rto)) = (o.rto_target_seconds, rep.timings.rto_seconds) {
        o.rto_met = Some(rto <= target as f64);
        if o.rto_met == Some(false) {
            rep.failures.push(format!(
                "RTO objective missed: {rto:.1} s to recover, target {target} s (drill.rto_target_seconds)"
            ));
        }
    }
    if let Some(target) = o.rpo_target_seconds {
        let age = rep.rpo.newest_wal_age_seconds;
        o.rpo_met = Some(age.is_some_and(|a| a <= target as f64));
        if o.rpo_met == Some(false) {
            rep.failures.push(format!(
                "RPO objective missed: newest WAL {} s old at drill start, target {target} s (drill.rpo_target_seconds)",
                age.map(|a| format!("{a:.0}")).unwrap_or_else(|| "(none archived)".into())
            ));
        }
    }
}

/// The checks asked for (amcheck, the user's), on the scratch cluster.
pub(super) async fn run_checks(drill: &Drill<'_>, rep: &mut Report) -> Result<()> {
    let (scratch, amcheck) = (drill.scratch, drill.amcheck);
    let connect = |db: &str| {
        let conninfo = scratch.conninfo(db);
        async move { pg::conn::connect(Some(&conninfo)).await }
    };
    let admin = connect("postgres")
        .await
        .context("connecting to the restored server")?;
    let databases: Vec<String> = admin
        .query(
            "select datname from pg_database where datallowconn order by datname",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for db in &databases {
        tracing::info!("checking database {db}");
        let client = match connect(db).await {
            Ok(c) => c,
            Err(e) => {
                rep.checks.push(CheckResult::builtin(
                    format!("database {db} connects"),
                    Some(db),
                    Status::Failed,
                    format!("{e:#}"),
                ));
                continue;
            }
        };
        rep.checks.push(CheckResult::builtin(
            format!("database {db} connects"),
            Some(db),
            Status::Passed,
            "connected".into(),
        ));
        let (read, tables) = checks::read_tables(&client, db).await?;
        rep.checks.push(read);
        rep.tables.extend(tables);
        if amcheck {
            rep.checks.push(checks::amcheck(&client, db).await?);
        }
    }
    for check in drill.user_checks {
        let db = check.database.as_deref().unwrap_or("postgres");
        tracing::info!("user check '{}' in {db}", check.name);
        let result = match connect(db).await {
            Ok(client) => checks::run_user(&client, check, CHECK_TIMEOUT_SECS).await,
            Err(e) => CheckResult {
                name: check.name.clone(),
                kind: "user",
                database: Some(db.to_string()),
                status: Status::Failed,
                detail: format!("{e:#}"),
            },
        };
        rep.checks.push(result);
    }
    Ok(())
}

fn writable_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let probe = dir.join(format!(".walvault-drill-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("report directory {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}
