//! `drill --dump ID`: proves a logical dump. A new scratch cluster (initdb)
//! of the newest major installed here, at least the dump's; the dump's
//! globals and every database restored into it by `dump-restore`; then the
//! built-in checks, the dump's own (every table of its manifest is there) and
//! the user's, and the report.

use super::checks::{CheckResult, Status};
use super::report::{self, Report};
use super::{Drill, Options};
use crate::codec::Codec;
use crate::dump::{self, Manifest};
use crate::pg;
use crate::scratch::Scratch;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The dump's manifest, once it is known to be drillable here (the key for an
/// encrypted one): bad input fails before the scratch cluster is made.
pub async fn prepare(
    codec: &Codec,
    store: &dyn Store,
    id: &str,
    opts: &Options,
) -> Result<Manifest> {
    if opts.source.backup.is_some() {
        bail!("--dump and --backup each choose what to drill: give one");
    }
    let m = dump::read_manifest(store, id).await?;
    if m.encrypted {
        codec.check_key().context("the dump is encrypted")?;
    }
    Ok(m)
}

pub fn log_path(scratch: &Scratch) -> PathBuf {
    scratch.dir.join("server.log")
}

/// The drill of a dump: a new cluster, the dump restored into it, the checks.
pub async fn run(
    drill: &Drill<'_>,
    store: &dyn Store,
    m: &Manifest,
    rep: &mut Report,
) -> Result<()> {
    let (cfg, scratch) = (drill.cfg, drill.scratch);
    let (major, bin) = newest_server(m.server_major, &cfg.postgres)?;
    rep.target.description = format!("logical dump {} into PostgreSQL {major}", m.id);
    rep.dump = Some(report::DumpUsed {
        id: m.id.clone(),
        finished_at: m.finished_at,
        server_version: m.server_version.clone(),
        restored_into_major: major,
        databases: m.databases.iter().map(|d| d.database.clone()).collect(),
        raw_bytes: m.raw_bytes(),
        stored_bytes: m.stored_bytes(),
        encrypted: m.encrypted,
    });
    // A dump has no WAL: its age is its RPO, an objective on archiving does not apply.
    rep.objectives.rpo_target_seconds = None;
    rep.rpo.newest_wal_age_seconds = None;
    println!(
        "drill:    dump {} (PostgreSQL {}, finished {}) into a new PostgreSQL {major} cluster, scratch {}",
        m.id,
        m.server_version,
        m.finished_at.to_rfc3339(),
        scratch.dir.display()
    );
    rep.timings.plan_seconds = Some(drill.t0.elapsed().as_secs_f64());

    let t = Instant::now();
    init_and_start(&bin, scratch).await?;
    let start_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut globals = m.globals.is_some();
    for d in &m.databases {
        let opts = dump::restore::Options {
            id: m.id.clone(),
            database: Some(d.database.clone()),
            tables: Vec::new(),
            into: scratch.conninfo(&d.database),
            globals,
        };
        globals = false;
        dump::restore::run(cfg, store, drill.codec, opts)
            .await
            .with_context(|| format!("restoring database {}", d.database))?;
    }
    rep.timings.restore_seconds = Some(t.elapsed().as_secs_f64());
    rep.timings.downloaded_bytes = Some(m.stored_bytes());
    rep.timings.restored_bytes = Some(m.raw_bytes());
    // The time to a usable copy: a new cluster and the dump restored into it.
    rep.timings.rto_seconds = Some(drill.t0.elapsed().as_secs_f64());
    println!(
        "restored: {} database(s) in {:.1} s (cluster made in {start_s:.1} s)",
        m.databases.len(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    for d in &m.databases {
        rep.checks.push(tables_present(scratch, d).await);
    }
    super::run_checks(drill, rep).await?;
    rep.timings.checks_seconds = Some(t.elapsed().as_secs_f64());
    super::conclude(rep);
    Ok(())
}

/// The newest major whose server is installed here, at least `least`.
fn newest_server(least: u32, settings: &crate::config::Postgres) -> Result<(u32, PathBuf)> {
    let mut errors = Vec::new();
    for major in (least..=pg::majors::NEWEST).rev() {
        match pg::server_bin::server_bin_dir(major, settings) {
            Ok(dir) => return Ok((major, dir)),
            Err(e) => errors.push(e),
        }
    }
    bail!(
        "no PostgreSQL server of major {least} or newer to restore the dump into: {}",
        errors.last().map(|e| format!("{e:#}")).unwrap_or_default()
    )
}

/// initdb (this OS user as superuser, trust on the private socket only), then
/// start and wait until it takes connections.
async fn init_and_start(bin: &Path, scratch: &Scratch) -> Result<()> {
    let mut initdb = std::process::Command::new(bin.join("initdb"));
    initdb
        .arg("--pgdata")
        .arg(scratch.pgdata())
        .args(["--auth=trust", "--encoding=UTF8", "--no-sync", "--username"])
        .arg(pg::conn::os_user());
    pg::tools::run(initdb, "initdb")?;
    let mut args = vec![
        "-p".to_string(),
        scratch.port.to_string(),
        "-k".to_string(),
        scratch.socket_dir().display().to_string(),
    ];
    for s in scratch.server_settings() {
        args.extend(["-c".to_string(), s]);
    }
    let log = log_path(scratch);
    let server = pg::postmaster::spawn(&bin.join("postgres"), &scratch.pgdata(), &log, &args)?;
    let t = Instant::now();
    loop {
        if scratch.connect("postgres").await.is_ok() {
            return Ok(());
        }
        if server.exited().is_some() {
            bail!(
                "the scratch server stopped before it took connections: {}",
                pg::postmaster::words(&log)
            );
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the scratch server did not take connections within a minute");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every table the manifest lists is in the restored database.
async fn tables_present(scratch: &Scratch, d: &dump::Dumped) -> CheckResult {
    let name = format!("the dump's {} tables are restored", d.tables.len());
    let result = async {
        let c = scratch.connect(&d.database).await?;
        let mut missing = Vec::new();
        for t in &d.tables {
            let q = crate::table::names::Qualified {
                schema: t.schema.clone(),
                name: t.name.clone(),
            };
            if crate::table::objects::table_oid(&c, &q).await?.is_none() {
                missing.push(q.to_string());
            }
        }
        anyhow::Ok(missing)
    }
    .await;
    let (status, detail) = match result {
        Ok(m) if m.is_empty() => (
            Status::Passed,
            "every table of the manifest is there".into(),
        ),
        Ok(m) => (
            Status::Failed,
            format!("{} missing, e.g. {}", m.len(), m[0]),
        ),
        Err(e) => (Status::Failed, format!("{e:#}")),
    };
    CheckResult::builtin(name, Some(&d.database), status, detail)
}
