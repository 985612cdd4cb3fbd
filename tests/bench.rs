//! Benchmark (not part of the test run): `scripts/bench.sh [--runs N] [--segments N]`.
//!
//! Makes real WAL with pgbench, then pushes and fetches it one process call at a
//! time, as PostgreSQL does, on the local-directory and S3 backends, with zstd
//! and age encryption on. Baseline in the same invocation: `cp`, the archive
//! command of PostgreSQL's documentation. Prints medians and ratios.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    runs: usize,
    segments: usize,
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        segments: 64,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        match v[i].as_str() {
            "--runs" => {
                a.runs = v[i + 1].parse().expect("--runs N");
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
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            w.env(k, v);
        }
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

fn main() {
    let a = args();
    let root = pg_tempdir();
    eprintln!(
        "making {} segments of real WAL with pgbench ...",
        a.segments
    );
    let (segs, mut src) = make_segments(root.path(), a.segments);
    src.stop();
    let raw_mb = segs.len() as f64 * 16.0 * 1.048576;

    let idfile = root.path().join("identity.txt");
    let out = Command::new(walvault_bin())
        .args(["keygen", "-o", idfile.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let weed = Seaweed::start();
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
        let cp_dir = root.path().join(format!("cp-{run}"));
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
        let dest = root.path().join("RECOVERYXLOG");
        let mut p = timed(
            |i| {
                let mut c = Command::new("cp");
                c.arg(cp_dir.join(&names[i])).arg(&dest);
                c
            },
            segs.len(),
        );
        add("cp (baseline)   fetch".into(), &mut p);

        for backend in ["local dir", "S3 (SeaweedFS)"] {
            let mut env = if backend == "local dir" {
                fs_env(&root.path().join(format!("repo-{run}")))
            } else {
                weed.walvault_env(&format!("bench-{run}"))
            };
            env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient.clone());
            env.insert(
                "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
                idfile.display().to_string(),
            );
            env.insert("WALVAULT_LOG_LEVEL".into(), "warn".into());
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
                let stored: u64 = std::fs::read_dir(root.path().join(format!("repo-{run}/wal")))
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.metadata().unwrap().len())
                    .sum();
                stored_ratio = stored as f64 / (raw_mb * 1e6);
            }
        }
    }
    drop(weed);

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
}
