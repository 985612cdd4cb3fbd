//! Benchmark (not part of the test run): `scripts/bench.sh [--runs N] [--segments N]`.
//!
//! Makes real WAL with pgbench, then pushes and fetches it one process call at a
//! time, as PostgreSQL does, on the local-directory and S3 backends, with zstd
//! and age encryption on. Baseline in the same invocation: `cp`, the archive
//! command of PostgreSQL's documentation. Prints medians and ratios.

mod common;

use common::azurite::Azurite;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    runs: usize,
    segments: usize,
    scale: usize,
    /// Segments in the backlog-drain and in-order fetch part.
    drain: usize,
    /// MB of WAL in the replay part.
    replay_mb: usize,
    /// The parts to run (--only calls,drain,replay,backups); empty: all.
    only: Vec<String>,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        segments: 64,
        scale: 100,
        drain: 256,
        replay_mb: 2200,
        only: Vec::new(),
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        match v[i].as_str() {
            "--runs" => {
                a.runs = v[i + 1].parse().expect("--runs N");
                i += 1;
            }
            "--scale" => {
                a.scale = v[i + 1].parse().expect("--scale N");
                i += 1;
            }
            "--drain" => {
                a.drain = v[i + 1].parse().expect("--drain N");
                i += 1;
            }
            "--only" => {
                a.only = v[i + 1].split(',').map(str::to_string).collect();
                i += 1;
            }
            "--replay-mb" => {
                a.replay_mb = v[i + 1].parse().expect("--replay-mb N");
                i += 1;
            }
            "--segments" => {
                a.segments = v[i + 1].parse().expect("--segments N");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    a
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Real WAL: pgbench initialisation (bulk load) and transactions (updates, full-page images).
fn make_segments(root: &Path, n: usize) -> (Vec<PathBuf>, Cluster) {
    let stage = root.join("stage");
    std::fs::create_dir(&stage).unwrap();
    chown_pg(&stage);
    let mut c = Cluster::init(root, "src");
    c.conf(&format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min",
        stage.display()
    ));
    c.start(&base_env());
    c.pgbench(&["-i", "-s", "20", "-q"]);
    let count = || {
        std::fs::read_dir(&stage)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 24)
            .count()
    };
    while count() < n + 1 {
        c.pgbench(&["-n", "-c", "2", "-j", "2", "-T", "5"]);
        let last = c.switch_wal();
        c.wait_archived(&last, Duration::from_secs(120));
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&stage)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segs.sort();
    // The first segment is initdb's; take real workload from the second on.
    (segs.into_iter().skip(1).take(n).collect(), c)
}

struct Pass {
    per_call_ms: Vec<f64>,
    wall: Duration,
    /// Largest resident set of any one call, KiB.
    peak_rss_kb: i64,
}

/// Runs a command to its end; returns whether it succeeded, its stderr and its
/// peak RSS in KiB. Measured by GNU time: a child forked from this (large)
/// process would report this process's high-water mark instead of its own.
fn run_measured(c: &mut Command) -> (bool, String, i64) {
    let rss_file = std::env::temp_dir().join(format!("walvault-bench-rss.{}", std::process::id()));
    let mut w = Command::new("/usr/bin/time");
    w.args(["-q", "-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(c.get_program())
        .args(c.get_args())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            w.env(k, v);
        }
    }
    if let Some(d) = c.get_current_dir() {
        w.current_dir(d);
    }
    let out = w
        .output()
        .expect("spawn /usr/bin/time (Debian package time)");
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        rss,
    )
}

/// `run_measured` with its wall time: (seconds when it succeeded, stderr, peak RSS KiB).
fn measured_secs(c: &mut Command) -> (Option<f64>, String, i64) {
    let t = Instant::now();
    let (ok, err, rss) = run_measured(c);
    (ok.then(|| t.elapsed().as_secs_f64()), err, rss)
}

fn timed(mut cmds: impl FnMut(usize) -> Command, n: usize) -> Pass {
    let mut per_call_ms = Vec::with_capacity(n);
    let mut peak_rss_kb = 0;
    let t0 = Instant::now();
    for i in 0..n {
        let mut c = cmds(i);
        let t = Instant::now();
        let (ok, err, rss) = run_measured(&mut c);
        per_call_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        peak_rss_kb = peak_rss_kb.max(rss);
        assert!(ok, "call {i} failed: {err}");
    }
    Pass {
        per_call_ms,
        wall: t0.elapsed(),
        peak_rss_kb,
    }
}

fn walvault_cmd(args: &[&str], env: &BTreeMap<String, String>) -> Command {
    let mut c = Command::new(walvault_bin());
    c.envs(env).args(args);
    c
}

struct Row {
    label: String,
    ms: Vec<f64>,
    mbps: Vec<f64>,
    p90: Vec<f64>,
    rss_kb: i64,
}

/// The age key pair every walvault repository of the benchmark is encrypted with.
struct Keys {
    recipient: String,
    idfile: PathBuf,
}

impl Keys {
    fn new(root: &Path) -> Keys {
        let idfile = root.join("identity.txt");
        let out = Command::new(walvault_bin())
            .args(["keygen", "-o", idfile.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        // Restores run as the postgres user.
        chown_pg(&idfile);
        Keys {
            recipient: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            idfile,
        }
    }

    fn add_to(&self, env: &mut BTreeMap<String, String>) {
        env.insert(
            "WALVAULT_ENCRYPTION_RECIPIENTS".into(),
            self.recipient.clone(),
        );
        env.insert(
            "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
            self.idfile.display().to_string(),
        );
        env.insert("WALVAULT_LOG_LEVEL".into(), "warn".into());
    }
}

/// S3 settings and keys of `env` as `K=V ` words, for an archive or restore
/// command run by a server whose environment has none.
fn inline_env(env: &BTreeMap<String, String>) -> String {
    env.iter()
        .filter(|(k, _)| k.starts_with("AWS_") || k.starts_with("WALVAULT_"))
        .filter(|(k, _)| !k.ends_with("_FILE") || k.starts_with("WALVAULT_ENCRYPTION"))
        .filter(|(k, _)| *k != "WALVAULT_CONFIG")
        .map(|(k, v)| format!("{k}={v} "))
        .collect()
}

fn main() {
    let a = args();
    let root = pg_tempdir();
    let (weed, https) = Seaweed::start_with_https();
    let az = Azurite::start();
    az.create_container(AZ_CONTAINER);
    let keys = Keys::new(root.path());
    if a.wants("calls") {
        bench_calls(&a, root.path(), &weed, &az, https, &keys);
    }
    if a.wants("drain") {
        println!("{}", bench_drain(&a, root.path(), &weed, https, &keys));
    }
    if a.wants("replay") {
        println!("{}", bench_replay(&a, root.path(), &weed, https, &keys));
    }
    if a.wants("backups") {
        let backups = bench_backups(&a, root.path(), &weed, &az, https, &keys);
        println!("{backups}");
    }
    drop(weed);
}

/// One process per call, as PostgreSQL calls archive_command and restore_command.
/// The Azurite container the Azure rows use.
const AZ_CONTAINER: &str = "bench";

fn bench_calls(a: &Args, root: &Path, weed: &Seaweed, az: &Azurite, https: u16, keys: &Keys) {
    eprintln!(
        "making {} segments of real WAL with pgbench ...",
        a.segments
    );
    let (segs, mut src) = make_segments(root, a.segments);
    // One pgBackRest repository per run (stanza-create needs the cluster up).
    let pgbr: Vec<PgBackRest> = (0..a.runs)
        .map(|run| PgBackRest::new(root, weed, https, &format!("seq{run}"), &src))
        .collect();
    src.stop();
    let raw_mb = segs.len() as f64 * 16.0 * 1.048576;

    let names: Vec<String> = segs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut stored_ratio = 0.0;
    let mut add = |label: String, pass: &mut Pass| {
        let row = match rows.iter_mut().position(|r| r.label == label) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(Row {
                    label,
                    ms: vec![],
                    mbps: vec![],
                    p90: vec![],
                    rss_kb: 0,
                });
                rows.last_mut().unwrap()
            }
        };
        row.ms.push(median(&mut pass.per_call_ms));
        row.p90.push(p90(&mut pass.per_call_ms));
        row.mbps.push(raw_mb / pass.wall.as_secs_f64());
        row.rss_kb = row.rss_kb.max(pass.peak_rss_kb);
    };

    for run in 0..a.runs {
        eprintln!("run {} of {} ...", run + 1, a.runs);
        // Baseline: cp, as in PostgreSQL's documentation (no compression, no fsync).
        let cp_dir = root.join(format!("cp-{run}"));
        std::fs::create_dir(&cp_dir).unwrap();
        let mut p = timed(
            |i| {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!(
                    "test ! -f '{0}/{1}' && cp '{2}' '{0}/{1}'",
                    cp_dir.display(),
                    names[i],
                    segs[i].display()
                ));
                c
            },
            segs.len(),
        );
        add("cp (baseline)   push".into(), &mut p);
        let dest = root.join("RECOVERYXLOG");
        let mut p = timed(
            |i| {
                let mut c = Command::new("cp");
                c.arg(cp_dir.join(&names[i])).arg(&dest);
                c
            },
            segs.len(),
        );
        add("cp (baseline)   fetch".into(), &mut p);

        for backend in ["local dir", "S3 (SeaweedFS)", "Azure (Azurite)"] {
            let mut env = match backend {
                "local dir" => fs_env(&root.join(format!("repo-{run}"))),
                "S3 (SeaweedFS)" => weed.walvault_env(&format!("bench-{run}")),
                _ => az.walvault_env(AZ_CONTAINER, &format!("bench-{run}")),
            };
            keys.add_to(&mut env);
            let mut p = timed(
                |i| walvault_cmd(&["wal-push", segs[i].to_str().unwrap()], &env),
                segs.len(),
            );
            add(format!("walvault {backend:<7} push"), &mut p);
            let mut p = timed(
                |i| walvault_cmd(&["wal-fetch", &names[i], dest.to_str().unwrap()], &env),
                segs.len(),
            );
            add(format!("walvault {backend:<7} fetch"), &mut p);
            assert!(
                std::fs::read(&dest).unwrap() == std::fs::read(segs.last().unwrap()).unwrap(),
                "fetched bytes differ"
            );
            if backend == "local dir" {
                let stored: u64 = std::fs::read_dir(root.join(format!("repo-{run}/wal")))
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.metadata().unwrap().len())
                    .sum();
                stored_ratio = stored as f64 / (raw_mb * 1e6);
            }
        }
        // pgBackRest, sync, one process per call like walvault.
        let mut p = timed(
            |i| pgbr[run].cmd(&["archive-push", segs[i].to_str().unwrap()]),
            segs.len(),
        );
        add("pgBackRest S3 (sync) push".into(), &mut p);
        // pgBackRest runs as postgres: its destination lies in a directory it owns.
        let pg_dest_dir = root.join(format!("pgbr-dest-{run}"));
        std::fs::create_dir(&pg_dest_dir).unwrap();
        chown_pg(&pg_dest_dir);
        let pg_dest = pg_dest_dir.join("RECOVERYXLOG");
        let mut p = timed(
            |i| pgbr[run].cmd(&["archive-get", &names[i], pg_dest.to_str().unwrap()]),
            segs.len(),
        );
        assert!(
            std::fs::read(&pg_dest).unwrap() == std::fs::read(segs.last().unwrap()).unwrap(),
            "pgBackRest fetched bytes differ"
        );
        add("pgBackRest S3 (sync) fetch".into(), &mut p);
    }

    println!(
        "\nwalvault benchmark: {} real 16 MiB WAL segments from pgbench, one process per call; zstd-1, age encryption on; {} runs",
        segs.len(),
        a.runs
    );
    println!("stored size: {:.1}% of raw WAL\n", stored_ratio * 100.0);
    println!(
        "{:<28} {:>14} {:>10} {:>10} {:>12} {:>14}",
        "", "median ms/seg", "p90 ms", "raw MB/s", "x cp time", "peak RSS MiB"
    );
    let base = |op: &str, rows: &mut Vec<Row>| -> f64 {
        let r = rows
            .iter_mut()
            .find(|r| r.label == format!("cp (baseline)   {op}"))
            .unwrap();
        median(&mut r.ms)
    };
    let (push_base, fetch_base) = (base("push", &mut rows), base("fetch", &mut rows));
    for r in rows.iter_mut() {
        let ms = median(&mut r.ms);
        let b = if r.label.ends_with("push") {
            push_base
        } else {
            fetch_base
        };
        println!(
            "{:<28} {:>14.1} {:>10.1} {:>10.0} {:>12.2} {:>14.1}",
            r.label,
            ms,
            median(&mut r.p90),
            median(&mut r.mbps),
            ms / b,
            r.rss_kb as f64 / 1024.0
        );
    }
    let med = |rows: &mut Vec<Row>, label: &str| -> f64 {
        median(&mut rows.iter_mut().find(|r| r.label == label).unwrap().ms)
    };
    let (wp, pp) = (
        med(&mut rows, "walvault S3 (SeaweedFS) push"),
        med(&mut rows, "pgBackRest S3 (sync) push"),
    );
    let (wf, pf) = (
        med(&mut rows, "walvault S3 (SeaweedFS) fetch"),
        med(&mut rows, "pgBackRest S3 (sync) fetch"),
    );
    println!(
        "
walvault against pgBackRest (S3, one process per call): push {:.2}x faster, fetch {:.2}x faster",
        pp / wp,
        pf / wf
    );
    let (ap, af) = (
        med(&mut rows, "walvault Azure (Azurite) push"),
        med(&mut rows, "walvault Azure (Azurite) fetch"),
    );
    println!(
        "walvault on Azure (Azurite) against S3 (SeaweedFS): push {:.2}x the time, fetch {:.2}x the time",
        ap / wp,
        af / wf
    );
}

/// Runs a walvault command as the postgres user under GNU time; returns
/// (seconds, peak RSS KiB, stdout).
fn timed_pg(args: &[&str], env: &BTreeMap<String, String>) -> (f64, i64, String) {
    let rss_file =
        std::env::temp_dir().join(format!("walvault-bench-pg-rss.{}", std::process::id()));
    let _ = std::fs::remove_file(&rss_file);
    let mut c = pg_command("/usr/bin/time", env);
    c.args(["-q", "-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(walvault_bin())
        .args(args);
    let t = Instant::now();
    let out = c.output().expect("run walvault");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "walvault {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (secs, rss, String::from_utf8_lossy(&out.stdout).to_string())
}

/// backup-push and a full recover of a pgbench database on both backends, beside
/// pg_basebackup to a local directory and pgBackRest backup/restore to the same S3.
fn bench_backups(
    a: &Args,
    root: &Path,
    weed: &Seaweed,
    az: &Azurite,
    https: u16,
    keys: &Keys,
) -> String {
    let repo = root.join("backup-repo");
    std::fs::create_dir(&repo).unwrap();
    chown_pg(&repo);
    let mut fs = fs_env(&repo);
    let mut s3 = weed.walvault_env("backup-bench");
    let mut azure = az.walvault_env(AZ_CONTAINER, "backup-bench");
    for e in [&mut fs, &mut s3, &mut azure] {
        keys.add_to(e);
    }
    // The source archives into the three repositories (S3 and Azure named inline;
    // the Azure key is Azurite's public development key).
    let mut src = Cluster::init(root, "backup-src");
    let bin = walvault_bin().display().to_string();
    src.conf(&format!(
        "archive_mode = on\narchive_command = '\"{bin}\" wal-push %p && WALVAULT_REPO={} \"{bin}\" wal-push %p && WALVAULT_REPO={} WALVAULT_AZURE_ENDPOINT={} AZURE_STORAGE_ACCOUNT_KEY={} \"{bin}\" wal-push %p'\nmax_wal_size = 4GB",
        s3["WALVAULT_REPO"],
        azure["WALVAULT_REPO"],
        azure["WALVAULT_AZURE_ENDPOINT"],
        azure["AZURE_STORAGE_ACCOUNT_KEY"]
    ));
    let mut both = fs.clone();
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "WALVAULT_S3_FORCE_PATH_STYLE",
    ] {
        both.insert(k.into(), s3[k].clone());
    }
    src.start(&both);
    // pgBackRest's backup waits for its own archive: the same segments go there too.
    let pgbr = PgBackRest::new(root, weed, https, "backup", &src);
    let archive = src.psql("show archive_command");
    src.psql(&format!(
        "alter system set archive_command = '{}'",
        format!("{archive} && {}", pgbr.command_line("", "archive-push %p")).replace('\'', "''")
    ));
    src.psql("select pg_reload_conf()");
    eprintln!("making a pgbench database of scale {} ...", a.scale);
    src.pgbench(&["-i", "-s", &a.scale.to_string(), "-q"]);
    src.psql("checkpoint");
    let db_mb: f64 = src
        .psql("select sum(pg_database_size(oid)) / 1e6 from pg_database")
        .parse()
        .unwrap();

    let mut rows: Vec<(String, Vec<f64>, i64)> = Vec::new();
    let mut add = |label: &str, secs: f64, rss: i64| match rows.iter_mut().find(|r| r.0 == label) {
        Some(r) => {
            r.1.push(secs);
            r.2 = r.2.max(rss);
        }
        None => rows.push((label.to_string(), vec![secs], rss)),
    };
    for run in 0..a.runs {
        eprintln!("backup run {} of {} ...", run + 1, a.runs);
        let dest = root.join(format!("basebackup-{run}"));
        let t = Instant::now();
        src.basebackup(&dest);
        add(
            "pg_basebackup (baseline), local dir",
            t.elapsed().as_secs_f64(),
            0,
        );
        std::fs::remove_dir_all(&dest).unwrap();

        for (name, env) in [("local dir", &fs), ("S3", &s3), ("Azure", &azure)] {
            let (secs, rss, _) = timed_pg(&["backup-push", "--fast"], &src.pg_env(env));
            add(&format!("walvault backup-push, {name}"), secs, rss);
            let mut b = Cluster::at(root, &format!("restored-{run}-{}", name.replace(' ', "")));
            let owned = b.recover_args();
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            let (secs, rss, text) = timed_pg(&args, env);
            b.adopt();
            b.stop();
            add(&format!("walvault recover (latest), {name}"), secs, rss);
            if let Some(line) = text.lines().find(|l| l.starts_with("recovered:")) {
                eprintln!("  {name}: {line}");
            }
            std::fs::remove_dir_all(&b.pgdata).unwrap();
        }

        // pgBackRest: full backup (process-max 2, zstd-1, encrypted), then a restore
        // and PostgreSQL's recovery to the end of its archive, as walvault recover does.
        let (ok, err, rss) =
            measured_secs(&mut pgbr.cmd(&["--start-fast", "--type=full", "backup"]));
        assert!(ok.is_some(), "pgbackrest backup: {err}");
        add("pgBackRest backup, S3", ok.unwrap(), rss);
        let mut b = Cluster::at(root, &format!("pgbr-restored-{run}"));
        std::fs::create_dir(&b.pgdata).unwrap();
        std::fs::set_permissions(
            &b.pgdata,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        chown_pg(&b.pgdata);
        let t = Instant::now();
        let pg1 = format!("--pg1-path={}", b.pgdata.display());
        let (ok, err, rss) = measured_secs(&mut pgbr.cmd(&[&pg1, "restore"]));
        assert!(ok.is_some(), "pgbackrest restore: {err}");
        add("pgBackRest restore, S3 (files only)", ok.unwrap(), rss);
        b.conf("archive_mode = off");
        // The restore_command pgBackRest wrote, made asynchronous (its prefetch) as
        // walvault's has prefetch; the last line of postgresql.auto.conf wins.
        let auto = b.pgdata.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap();
        text.push_str(&format!(
            "\nrestore_command = '{}'\n",
            pgbr.command_line(&format!("--archive-async {pg1}"), "archive-get %f \"%p\"")
        ));
        std::fs::write(&auto, text).unwrap();
        b.start_opts(&base_env(), false);
        b.wait_promoted(Duration::from_secs(1800));
        add(
            "pgBackRest restore + recovery, S3",
            t.elapsed().as_secs_f64(),
            0,
        );
        b.stop();
        std::fs::remove_dir_all(&b.pgdata).unwrap();
    }
    src.stop();
    let base = {
        let r = rows
            .iter_mut()
            .find(|r| r.0.starts_with("pg_basebackup"))
            .unwrap();
        median(&mut r.1)
    };
    let mut out = format!(
        "\nbase backups: pgbench scale {} ({db_mb:.0} MB of databases), zstd-1, age encryption on, {} runs\n\n{:<40} {:>10} {:>10} {:>14} {:>14}\n",
        a.scale, a.runs, "", "median s", "MB/s", "x basebackup", "peak RSS MiB"
    );
    for r in rows.iter_mut() {
        let m = median(&mut r.1);
        let rss = if r.2 > 0 {
            format!("{:.1}", r.2 as f64 / 1024.0)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<40} {:>10.1} {:>10.0} {:>14.2} {:>14}\n",
            r.0,
            m,
            db_mb / m,
            m / base,
            rss
        ));
    }
    let mut med = |label: &str| median(&mut rows.iter_mut().find(|r| r.0 == label).unwrap().1);
    out.push_str(&format!(
        "\nwalvault against pgBackRest (S3, process-max 2; its peak RSS is its largest process): backup {:.2}x faster, restore and recovery {:.2}x faster\n",
        med("pgBackRest backup, S3") / med("walvault backup-push, S3"),
        med("pgBackRest restore + recovery, S3") / med("walvault recover (latest), S3"),
    ));
    out.push_str(&format!(
        "walvault on Azure (Azurite) against S3 (SeaweedFS): backup {:.2}x the time, restore and recovery {:.2}x the time\n",
        med("walvault backup-push, Azure") / med("walvault backup-push, S3"),
        med("walvault recover (latest), Azure") / med("walvault recover (latest), S3"),
    ));
    out
}

/// pgBackRest beside walvault: same S3 server (over TLS, which it requires),
/// zstd-1, repository encryption on (as walvault's age), run as postgres.
struct PgBackRest {
    conf: PathBuf,
    stanza: String,
}

impl PgBackRest {
    /// Writes the configuration for `pg` (running: stanza-create connects).
    fn new(root: &Path, weed: &Seaweed, https: u16, name: &str, pg: &Cluster) -> PgBackRest {
        let dir = root.join(format!("pgbackrest-{name}"));
        for d in ["log", "lock", "spool"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let conf = dir.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-type=s3\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={https}\n\
                 repo1-storage-verify-tls=n\nrepo1-s3-bucket={BUCKET}\nrepo1-s3-region=us-east-1\n\
                 repo1-s3-key={}\nrepo1-s3-key-secret={}\nrepo1-s3-uri-style=path\nrepo1-path=/pgbr-{name}\n\
                 repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=walvault-bench-passphrase\n\
                 compress-type=zst\ncompress-level=1\nprocess-max=2\n\
                 log-path={dir}/log\nlock-path={dir}/lock\nspool-path={dir}/spool\n\
                 log-level-console=warn\nlog-level-file=off\narchive-get-queue-max=512MB\n\n\
                 [{name}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\n",
                weed.access_key,
                weed.secret_key,
                pg.pgdata.display(),
                pg.sockdir.display(),
                pg.port,
                dir = dir.display()
            ),
        )
        .unwrap();
        chown_pg(&dir);
        let p = PgBackRest {
            conf,
            stanza: name.to_string(),
        };
        let out = p.cmd(&["stanza-create"]).output().unwrap();
        assert!(
            out.status.success(),
            "pgbackrest stanza-create: {}",
            stderr(&out)
        );
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = pg_command("/usr/bin/pgbackrest", &BTreeMap::new());
        c.arg(format!("--config={}", self.conf.display()))
            .arg(format!("--stanza={}", self.stanza))
            .args(args);
        c
    }

    /// The archive_command / restore_command text.
    fn command_line(&self, extra: &str, verb: &str) -> String {
        format!(
            "/usr/bin/pgbackrest --config={} --stanza={} {extra} {verb}",
            self.conf.display(),
            self.stanza
        )
    }
}

/// Backlog drain (PostgreSQL's archiver with a backlog of `n` segments) and
/// in-order fetch of the same segments, walvault against pgBackRest async.
fn bench_drain(a: &Args, root: &Path, weed: &Seaweed, https: u16, keys: &Keys) -> String {
    let n = a.drain;
    let mut d = Cluster::init(root, "drain");
    d.conf("archive_mode = on\narchive_command = '/bin/false'\nmax_wal_size = 16GB\ncheckpoint_timeout = 1h\nmin_wal_size = 8GB");
    d.start(&base_env());
    eprintln!("making a backlog of {n} segments of real WAL ...");
    while ready_files(&d.pgdata).len() < n {
        d.pgbench(&["-i", "-s", "30", "-q"]);
    }
    d.psql("select pg_switch_wal()");
    let backlog: Vec<String> = ready_files(&d.pgdata)
        .into_iter()
        .filter(|f| f.len() == 24)
        .take(n)
        .collect();
    let raw_mb = backlog.len() as f64 * 16.777216;
    let status = d.pgdata.join("pg_wal/archive_status");
    // Every other .ready file (beyond the backlog) becomes .done: not measured.
    for f in ready_files(&d.pgdata) {
        if !backlog.contains(&f) {
            std::fs::rename(
                status.join(format!("{f}.ready")),
                status.join(format!("{f}.done")),
            )
            .unwrap();
        }
    }
    let set_command = |cmd: &str| {
        d.psql(&format!(
            "alter system set archive_command = '{}'",
            cmd.replace('\'', "''")
        ));
        d.psql("select pg_reload_conf()");
    };
    // Drains the backlog through `cmd`: the archiver's wall time until every
    // .ready file of the backlog is .done.
    let drain = |cmd: &str| -> f64 {
        set_command("/bin/false");
        for f in &backlog {
            let done = status.join(format!("{f}.done"));
            if done.exists() {
                std::fs::rename(&done, status.join(format!("{f}.ready"))).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        set_command(cmd);
        d.psql("select pg_switch_wal()");
        while backlog
            .iter()
            .any(|f| status.join(format!("{f}.ready")).exists())
        {
            assert!(
                t.elapsed() < Duration::from_secs(1800),
                "drain stuck: {}",
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed().as_secs_f64()
    };

    let bin = walvault_bin().display().to_string();
    let mut s3 = weed.walvault_env("drain");
    keys.add_to(&mut s3);
    let mut walvault_s = Vec::new();
    let mut pgbr_s = Vec::new();
    let mut fetch_rows: Vec<(String, Vec<f64>, i64)> = Vec::new();
    let mut add =
        |label: &str, secs: f64, rss: i64| match fetch_rows.iter_mut().find(|r| r.0 == label) {
            Some(r) => {
                r.1.push(secs);
                r.2 = r.2.max(rss);
            }
            None => fetch_rows.push((label.to_string(), vec![secs], rss)),
        };
    let fake = root.join("drain-fake");
    std::fs::create_dir_all(fake.join("pg_wal")).unwrap();
    chown_pg(&fake);
    for run in 0..a.runs {
        eprintln!("drain run {} of {} ...", run + 1, a.runs);
        let repo = format!("{}-{run}", s3["WALVAULT_REPO"]);
        let mut env = s3.clone();
        env.insert("WALVAULT_REPO".into(), repo.clone());
        // The server's environment has no S3 settings: they go inline.
        walvault_s.push(drain(&format!(
            "env {}\"{bin}\" wal-push %p",
            inline_env(&env)
        )));
        let pgbr = PgBackRest::new(root, weed, https, &format!("drain{run}"), &d);
        pgbr_s.push(drain(
            &pgbr.command_line("--archive-async", "archive-push %p"),
        ));

        // Recovery's side: the same segments fetched in order, one call each, into
        // a pg_wal (so walvault's prefetch spool is where it would be).
        for (label, prefetch) in [
            ("walvault wal-fetch, prefetch 16", "16"),
            ("walvault wal-fetch, no prefetch", "0"),
        ] {
            env.insert("WALVAULT_FETCH_PREFETCH".into(), prefetch.into());
            let _ = std::fs::remove_dir_all(fake.join("pg_wal/walvault_prefetch"));
            let mut rss = 0;
            let t = Instant::now();
            for f in &backlog {
                let mut c = walvault_cmd(&["wal-fetch", f, "pg_wal/RECOVERYXLOG"], &env);
                c.current_dir(&fake);
                let (ok, err, r) = run_measured(&mut c);
                assert!(ok, "wal-fetch {f}: {err}");
                rss = rss.max(r);
            }
            add(label, t.elapsed().as_secs_f64(), rss);
        }
        let _ = std::fs::remove_dir_all(fake.join("pg_wal/walvault_prefetch"));
        let mut rss = 0;
        let t = Instant::now();
        for f in &backlog {
            let dest = fake.join("pg_wal/RECOVERYXLOG");
            let mut c = pgbr.cmd(&["--archive-async", "archive-get", f, dest.to_str().unwrap()]);
            let (ok, err, r) = run_measured(&mut c);
            assert!(ok, "pgbackrest archive-get {f}: {err}");
            rss = rss.max(r);
        }
        add(
            "pgBackRest archive-get, async",
            t.elapsed().as_secs_f64(),
            rss,
        );
    }
    d.stop();
    let (w, p) = (median(&mut walvault_s), median(&mut pgbr_s));
    let mut out = format!(
        "\nbacklog drain: {} segments ({raw_mb:.0} MB of real WAL) .ready, PostgreSQL's archiver until all are .done; {} runs\n\n{:<44} {:>10} {:>10} {:>16}\n",
        backlog.len(),
        a.runs,
        "",
        "median s",
        "MB/s",
        "x pgBackRest"
    );
    out.push_str(&format!(
        "{:<44} {:>10.1} {:>10.0} {:>16.2}\n",
        "walvault (lookahead 8, 4 at once)",
        w,
        raw_mb / w,
        p / w
    ));
    out.push_str(&format!(
        "{:<44} {:>10.1} {:>10.0} {:>16}\n",
        "pgBackRest async (process-max 2)",
        p,
        raw_mb / p,
        "1.00"
    ));
    let pg_fetch = {
        let r = fetch_rows
            .iter_mut()
            .find(|r| r.0.starts_with("pgBackRest"))
            .unwrap();
        median(&mut r.1)
    };
    out.push_str(&format!(
        "\nin-order fetch of the same {} segments, one call each (as restore_command)\n\n{:<44} {:>10} {:>10} {:>12} {:>12} {:>10}\n",
        backlog.len(),
        "",
        "median s",
        "MB/s",
        "ms/segment",
        "x pgBackRest",
        "peak RSS"
    ));
    for r in fetch_rows.iter_mut() {
        let m = median(&mut r.1);
        out.push_str(&format!(
            "{:<44} {:>10.1} {:>10.0} {:>12.1} {:>12.2} {:>9.1}M\n",
            r.0,
            m,
            raw_mb / m,
            m * 1000.0 / backlog.len() as f64,
            pg_fetch / m,
            r.2 as f64 / 1024.0
        ));
    }
    out
}

/// Replay of at least `--replay-mb` of real WAL from each archive, from one base
/// backup: restore_command `cp` from a local directory (PostgreSQL's own replay
/// speed is the limit), walvault wal-fetch from S3, pgBackRest archive-get async.
fn bench_replay(a: &Args, root: &Path, weed: &Seaweed, https: u16, keys: &Keys) -> String {
    let mut src = Cluster::init(root, "replay-src");
    src.conf("archive_mode = on\narchive_command = '/bin/false'\nmax_wal_size = 16GB\ncheckpoint_timeout = 1h");
    src.start(&base_env());
    let pgbr = PgBackRest::new(root, weed, https, "replay", &src);
    let cp_dir = root.join("replay-cp-archive");
    std::fs::create_dir(&cp_dir).unwrap();
    chown_pg(&cp_dir);
    let mut s3 = weed.walvault_env("replay");
    keys.add_to(&mut s3);
    let bin = walvault_bin().display().to_string();
    let inline = inline_env(&s3);
    // Every segment goes to all three archives before it counts as archived.
    let archive = format!(
        "cp %p {}/%f && env {inline}\"{bin}\" wal-push %p && {}",
        cp_dir.display(),
        pgbr.command_line("", "archive-push %p")
    );
    src.psql(&format!(
        "alter system set archive_command = '{}'",
        archive.replace('\'', "''")
    ));
    src.psql("select pg_reload_conf()");
    src.pgbench(&["-i", "-s", "1", "-q"]);
    let base = root.join("replay-base");
    src.basebackup(&base);
    eprintln!("making at least {} MB of real WAL ...", a.replay_mb);
    let start_lsn = src.psql("select pg_current_wal_lsn()");
    let wal_mb = |c: &Cluster| -> f64 {
        c.psql(&format!(
            "select (pg_current_wal_lsn() - '{start_lsn}') / 1e6"
        ))
        .parse()
        .unwrap()
    };
    // Bulk loads and index builds (replay is fastest there, so fetching shows
    // most), then small transactions.
    while wal_mb(&src) < a.replay_mb as f64 * 0.8 {
        src.pgbench(&["-i", "-s", "20", "-q"]);
    }
    while wal_mb(&src) < a.replay_mb as f64 {
        src.pgbench(&["-c", "2", "-j", "2", "-T", "10"]);
    }
    let rows = src.psql("select count(*) from pgbench_history");
    let last = src.switch_wal();
    src.wait_archived(&last, Duration::from_secs(1800));
    let replayed_mb = wal_mb(&src);
    src.stop();

    let mut rows_out: Vec<(String, Vec<f64>)> = Vec::new();
    for run in 0..a.runs {
        eprintln!("replay run {} of {} ...", run + 1, a.runs);
        for (i, (label, restore)) in [
            (
                "cp from a local directory (baseline)",
                format!("cp {}/%f %p", cp_dir.display()),
            ),
            (
                "walvault wal-fetch, S3, prefetch 16",
                format!("env {inline}\"{bin}\" wal-fetch %f %p"),
            ),
            (
                "pgBackRest archive-get, S3, async",
                // It checks that the server runs in the data directory it knows.
                pgbr.command_line("--archive-async --pg1-path=PGDATA", "archive-get %f \"%p\""),
            ),
        ]
        .into_iter()
        .enumerate()
        {
            // pgBackRest's queue of a run before would serve this one from disk.
            let _ = std::fs::remove_dir_all(pgbr.conf.parent().unwrap().join("spool/archive"));
            let mut c = Cluster::at(root, &format!("replay-{run}-{i}"));
            let out = Command::new("cp")
                .arg("-a")
                .arg(&base)
                .arg(&c.pgdata)
                .output()
                .unwrap();
            assert!(out.status.success(), "cp -a: {}", stderr(&out));
            let restore = restore.replace("PGDATA", c.pgdata.to_str().unwrap());
            c.conf(&format!(
                "archive_mode = off\nrestore_command = '{}'\nrecovery_target_timeline = 'latest'",
                restore.replace('\'', "''")
            ));
            std::fs::write(c.pgdata.join("recovery.signal"), "").unwrap();
            chown_pg(&c.pgdata);
            let t = Instant::now();
            c.start_opts(&base_env(), false);
            c.wait_promoted(Duration::from_secs(1800));
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(
                c.psql("select count(*) from pgbench_history"),
                rows,
                "{label}: replay did not reach the end of the archive"
            );
            c.stop();
            std::fs::remove_dir_all(&c.pgdata).unwrap();
            match rows_out.iter_mut().find(|r| r.0 == label) {
                Some(r) => r.1.push(secs),
                None => rows_out.push((label.to_string(), vec![secs])),
            }
        }
    }
    let mut med: Vec<(String, f64)> = rows_out
        .iter_mut()
        .map(|r| (r.0.clone(), median(&mut r.1)))
        .collect();
    let (cp, pg) = (med[0].1, med[2].1);
    let mut out = format!(
        "\nreplay: {replayed_mb:.0} MB of real WAL from one base backup, server start to promotion; {} runs\n\n{:<44} {:>10} {:>10} {:>10} {:>14}\n",
        a.runs, "", "median s", "MB/s", "x cp time", "x pgBackRest"
    );
    for (label, m) in med.iter_mut() {
        out.push_str(&format!(
            "{:<44} {:>10.1} {:>10.0} {:>10.2} {:>14.2}\n",
            label,
            m,
            replayed_mb / *m,
            *m / cp,
            pg / *m
        ));
    }
    out
}
