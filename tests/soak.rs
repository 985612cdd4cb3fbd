//! The soak run: pgbench writes for a while (SOAK_SECONDS, 120 by
//! default) while the S3 server is restarted every 30 s and a base backup is
//! taken half way; a table of marks gets one row a second. Afterwards every
//! segment is in the repository, and recoveries to 5 random times inside the
//! window land exactly: the marks committed up to the target, none after.
//! It also prints what archiving through walvault costs pgbench (TPS).

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Not WALVAULT_*: the test's environment reaches walvault, which refuses
/// settings it does not know.
fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

/// pgbench's TPS over `secs` with two clients.
fn tps(a: &Cluster, secs: u32) -> f64 {
    let out = a.pgbench_output(&["-n", "-c", "2", "-j", "1", "-T", &secs.to_string()]);
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output:\n{out}"))
}

/// A small deterministic generator, seeded from the clock or SOAK_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn soak_with_s3_restarts_ends_in_exact_recoveries() {
    let secs = soak_seconds();
    let mut s3 = Seaweed::start();
    let env = s3.walvault_env("soak");
    let root = pg_tempdir();
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("wal_keep_size = '8GB'\ntrack_commit_timestamp = on");
    a.start(&env);
    a.psql("alter system set archive_timeout = '1s'");
    a.psql("select pg_reload_conf()");
    a.pgbench(&["-i", "-s", "2", "-q"]);
    a.psql(
        "create table marks (id bigserial primary key, at timestamptz default clock_timestamp())",
    );
    let src = Source {
        root,
        a,
        env: env.clone(),
    };
    let a = &src.a;
    src.backup();

    let marks_failed = AtomicU64::new(0);
    let started = Instant::now();
    let mut restarts = 0;
    let mut mid_backup = None;
    under_load(a, || {
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let marks = sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if a.psql_try("insert into marks default values").is_err() {
                        marks_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
            let stop_marks = StopOnDrop(&stop);
            let mut next_restart = Duration::from_secs(30);
            while started.elapsed() < Duration::from_secs(secs) {
                std::thread::sleep(Duration::from_millis(200));
                if started.elapsed() >= next_restart {
                    s3.restart();
                    restarts += 1;
                    next_restart += Duration::from_secs(30);
                }
                if mid_backup.is_none() && started.elapsed() >= Duration::from_secs(secs / 2) {
                    mid_backup = Some(src.backup());
                }
            }
            drop(stop_marks);
            marks.join().unwrap();
        });
    });
    assert_eq!(marks_failed.load(Ordering::Relaxed), 0);
    a.flush_archive();
    assert!(
        ready_files(&a.pgdata).is_empty(),
        "{:?}",
        ready_files(&a.pgdata)
    );
    let segments = a.assert_archive_complete(&s3, "soak", &env);
    eprintln!(
        "soak: {secs} s, {restarts} S3 restarts, backup {} half way, {segments} segments all archived and byte-identical, {} archive_command failures on the way",
        mid_backup.as_deref().unwrap_or("-"),
        a.archiver_failed_count()
    );
    assert!(restarts >= 1 || secs < 30);

    // What was committed when: each mark's commit time, in microseconds.
    let marks: Vec<(i64, i64)> = a
        .psql("select id || ' ' || (extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000000)::bigint from marks order by id")
        .lines()
        .map(|l| {
            let (id, t) = l.split_once(' ').unwrap();
            (id.parse().unwrap(), t.parse().unwrap())
        })
        .collect();
    assert!(marks.len() as u64 >= secs / 2, "only {} marks", marks.len());
    let (lo, hi) = (marks[0].1, marks[marks.len() - 1].1);
    // SOAK_SEED picks the same relative targets again.
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("soak: random targets from seed {seed} (SOAK_SEED)");
    let mut rng = Rng(seed);
    for i in 0..5 {
        // A time inside the window, at least 20 ms from any commit of a mark.
        let target = loop {
            let t = lo + (rng.next() % (hi - lo) as u64) as i64;
            if marks.iter().all(|(_, m)| (m - t).abs() > 20_000) {
                break t;
            }
        };
        let when = chrono::DateTime::from_timestamp_micros(target)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S%.6f+00")
            .to_string();
        let mut b = src.recover(&format!("r{i}"), &["--target-time", &when]);
        let got: Vec<i64> = b
            .psql("select coalesce(string_agg(id::text, ',' order by id), '') from marks")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        let want: Vec<i64> = marks
            .iter()
            .filter(|(_, t)| *t <= target)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(got, want, "recovery to {when} is not exact");
        eprintln!(
            "soak: recovery {} to {when}: exact ({} marks)",
            i + 1,
            got.len()
        );
        b.stop();
        let _ = std::fs::remove_dir_all(&b.pgdata);
    }

    // The cost of archiving to the database: the same load with archive_command
    // doing nothing, and through walvault, alternated.
    let set = |cmd: Option<&str>| {
        match cmd {
            Some(c) => a.psql(&format!("alter system set archive_command = '{c}'")),
            None => a.psql("alter system reset archive_command"),
        };
        a.psql("select pg_reload_conf()");
    };
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        set(Some("/bin/true"));
        off.push(tps(a, 15));
        set(None);
        on.push(tps(a, 15));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "soak: pgbench TPS without archiving {:.0} ({off:.0?}), archiving through walvault {:.0} ({on:.0?}): archiving costs {:.1}%",
        mean(&off),
        mean(&on),
        100.0 * (1.0 - mean(&on) / mean(&off))
    );
    a.flush_archive();
    drop(src);
    s3.stop();
}
