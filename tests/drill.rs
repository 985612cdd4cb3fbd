//! Restore drills against real PostgreSQL 15 and SeaweedFS: a passing drill with
//! both reports complete, a failing user check, a missed objective, a missing
//! backup, and an interrupt; no scratch cluster or directory is ever left behind.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CHECKS: &str = "\
-- Checks a DBA would write for this schema.

-- check: no orphaned order lines
select l.id, l.order_id
  from order_lines l left join orders o on o.id = l.order_id
 where o.id is null;

-- check: orders exist
-- database: postgres
select count(*) > 0 from orders;
";

/// `drill` arguments with reports in `reports` and scratch in `scratch`.
fn drill_args<'a>(scratch: &'a Path, reports: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "drill",
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--report-dir",
        reports.to_str().unwrap(),
        "--operator",
        "drill-test",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `walvault drill` with reports in `reports` and scratch in `scratch`.
fn drill(
    env: &BTreeMap<String, String>,
    scratch: &Path,
    reports: &Path,
    extra: &[&str],
) -> std::process::Output {
    walvault(&drill_args(scratch, reports, extra), env, None)
}

/// The reports of the newest drill: (JSON, Markdown), and their base path.
fn newest_report(reports: &Path) -> (serde_json::Value, String, PathBuf) {
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    jsons.sort();
    let j = jsons.pop().expect("a JSON report");
    let v = serde_json::from_slice(&std::fs::read(&j).unwrap()).unwrap();
    let md = std::fs::read_to_string(j.with_extension("md")).expect("a Markdown report");
    (v, md, j)
}

/// Nothing of a drill is left: no directory below `scratch`, no server on it.
fn nothing_left(scratch: &Path) {
    let left: Vec<_> = std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    let needle = scratch.to_str().unwrap();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(
            !(cmd.contains("postgres") && cmd.contains(needle)),
            "a scratch server still runs: {cmd}"
        );
    }
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The name of the 16 MiB segment holding `lsn` on timeline `tli`.
fn segment_of(tli: u64, lsn: u64) -> String {
    format!(
        "{tli:08X}{:08X}{:08X}",
        lsn >> 32,
        (lsn & 0xffff_ffff) >> 24
    )
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// A timestamptz as psql prints it (`2026-12-02 11:50:00.123456+00`).
fn pg_time(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_str(&format!("{text}00"), "%Y-%m-%d %H:%M:%S%.f%z")
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&chrono::Utc)
}

fn clean(reports: &Path) {
    for e in std::fs::read_dir(reports).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
}

#[test]
fn drill_proves_restores_and_reports_failures() {
    let mut s3 = Seaweed::start();
    let src = source(|_| s3.walvault_env("drill"));
    let a = &src.a;
    a.psql(
        "create table orders (id int primary key, placed timestamptz default now());
         create table order_lines (id serial primary key, order_id int not null, qty int);
         create index on order_lines (order_id);
         insert into orders (id) select g from generate_series(1, 500) g;
         insert into order_lines (order_id, qty) select 1 + g % 500, g from generate_series(1, 2000) g;",
    );
    let backup = src.backup();
    a.psql("insert into orders (id) select g from generate_series(501, 700) g");
    let last_insert_lsn = a.psql("select pg_current_wal_lsn()");
    let last_insert_at = a.psql("select pg_xact_commit_timestamp(xmin) from orders where id = 700");
    src.flush_archive();
    let last_commit_at = a.psql("select timestamp from pg_last_committed_xact()");

    let scratch = src.root.path().join("scratch");
    let reports = src.root.path().join("reports");
    for d in [&scratch, &reports] {
        std::fs::create_dir_all(d).unwrap();
        chown_pg(d);
    }
    let checks = src.root.path().join("checks.sql");
    std::fs::write(&checks, CHECKS).unwrap();
    chown_pg(&checks);
    let checks_arg = ["--checks", checks.to_str().unwrap()];

    // 1. A drill that passes, with objectives set in the configuration.
    let mut env = src.env.clone();
    env.insert("WALVAULT_DRILL_RTO_TARGET_SECONDS".into(), "900".into());
    env.insert("WALVAULT_DRILL_RPO_TARGET_SECONDS".into(), "900".into());
    let out = drill(&env, &scratch, &reports, &checks_arg);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "drill: {}\n{text}", stderr(&out));
    assert!(text.contains("drill PASSED"), "{text}");
    nothing_left(&scratch);
    let (j, md, path) = newest_report(&reports);
    assert_eq!(j["result"], "passed");
    assert_eq!(j["backup"]["id"], backup.as_str());
    assert_eq!(j["operator"], "drill-test");
    for (section, keys) in [
        (
            "backup",
            &["label", "start_lsn", "stop_lsn", "stop_time"][..],
        ),
        (
            "wal",
            &[
                "first_segment",
                "last_segment",
                "end_lsn",
                "newest_stored_at",
            ],
        ),
        (
            "recovered",
            &["end_lsn", "timeline", "last_replayed_commit"],
        ),
        (
            "timings",
            &[
                "plan_seconds",
                "restore_seconds",
                "downloaded_bytes",
                "restored_bytes",
                "recovery_seconds",
                "rto_seconds",
                "checks_seconds",
                "total_seconds",
            ],
        ),
        ("rpo", &["newest_wal_age_seconds", "target_gap_seconds"]),
        (
            "objectives",
            &[
                "rto_target_seconds",
                "rpo_target_seconds",
                "rto_met",
                "rpo_met",
            ],
        ),
    ] {
        for k in keys {
            assert!(
                !j[section][k].is_null(),
                "report {section}.{k} is empty: {j:#}"
            );
        }
    }
    // The figures are the repository's and the server's own.
    let listed = walvault(&["backup-list", "--json"], &src.env, None);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let m = &listed["backups"][0];
    assert_eq!(m["id"], backup.as_str());
    for k in [
        "timeline",
        "start_lsn",
        "stop_lsn",
        "raw_bytes",
        "stored_bytes",
    ] {
        assert_eq!(j["backup"][k], m[k], "report backup.{k}");
    }
    assert_eq!(
        time(&j["backup"]["stop_time"]),
        time(&m["stop_time"]),
        "report backup.stop_time"
    );
    let tli = m["timeline"].as_u64().unwrap();
    assert_eq!(
        j["wal"]["first_segment"].as_str().unwrap(),
        segment_of(tli, lsn(m["start_lsn"].as_str().unwrap())),
        "the segment of the backup's start"
    );
    assert_eq!(j["wal"]["end_lsn"], listed["window"]["end_lsn"]);
    let wal_end = lsn(j["wal"]["end_lsn"].as_str().unwrap());
    assert_eq!(
        j["wal"]["last_segment"].as_str().unwrap(),
        segment_of(tli, wal_end - 1),
        "the segment the archive ends in"
    );
    assert_eq!(
        j["target"]["description"],
        "the end of the archived WAL (latest)"
    );
    // The source's timeline was followed; the scratch copy promoted onto the next.
    let source_tli: u64 = a
        .psql("select timeline_id from pg_control_checkpoint()")
        .parse()
        .unwrap();
    assert_eq!(j["target"]["timeline"], source_tli);
    assert_eq!(j["recovered"]["timeline"], source_tli + 1);
    let ended = lsn(j["recovered"]["end_lsn"].as_str().unwrap());
    assert!(
        ended >= lsn(&last_insert_lsn) && ended <= wal_end,
        "recovery ended at {ended:X}: after the last insert ({last_insert_lsn}), within the archive"
    );
    let replayed = time(&j["recovered"]["last_replayed_commit"]);
    assert!(
        replayed >= pg_time(&last_insert_at) && replayed <= pg_time(&last_commit_at),
        "last replayed commit {replayed}: the last insert's ({last_insert_at}) or a later one archived by {last_commit_at}"
    );
    assert_eq!(j["objectives"]["rto_met"], true);
    assert_eq!(j["objectives"]["rpo_met"], true);
    for k in [
        "host",
        "walvault_version",
        "repository",
        "started_at",
        "finished_at",
    ] {
        assert!(j[k].as_str().is_some_and(|v| !v.is_empty()), "{k}: {j:#}");
    }
    let check = |name: &str| -> serde_json::Value {
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check '{name}': {:#}", j["checks"]))
            .clone()
    };
    for name in [
        "server reaches the target and accepts connections",
        "database postgres connects",
        "database template1 connects",
        "every table of postgres reads",
        "amcheck on postgres",
        "no orphaned order lines",
        "orders exist",
    ] {
        assert_eq!(check(name)["status"], "passed", "{name}: {:#}", check(name));
    }
    assert!(
        check("amcheck on postgres")["detail"]
            .as_str()
            .unwrap()
            .contains("B-tree indexes"),
        "{:#}",
        check("amcheck on postgres")
    );
    let rows = |t: &str| {
        j["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["database"] == "postgres" && r["table"] == t)
            .map(|r| r["rows"].as_i64().unwrap())
    };
    assert_eq!(
        rows("public.orders"),
        Some(700),
        "target latest: every order"
    );
    assert_eq!(rows("public.order_lines"), Some(2000));
    for heading in [
        "## Summary",
        "## Backup used",
        "## WAL range",
        "## Target and result",
        "## Timings (RTO)",
        "## RPO",
        "## Objectives",
        "## Checks",
        "## Tables read",
    ] {
        assert!(md.contains(heading), "Markdown lacks {heading}:\n{md}");
    }
    assert!(md.starts_with("# Restore drill ") && md.contains("PASSED"));
    for empty in [
        "Not determined",
        "did not complete",
        "No check ran",
        "No table was read",
        "| - |",
    ] {
        assert!(
            !md.contains(empty),
            "Markdown has an empty section ({empty}):\n{md}"
        );
    }
    assert!(md.contains(&backup), "{md}");
    // Kept with the backups in the repository, byte for byte.
    let id = j["drill_id"].as_str().unwrap();
    let stored = s3.get(&format!("drill/drills/{id}/report.json"));
    assert_eq!(stored, std::fs::read(&path).unwrap());
    assert_eq!(
        s3.get(&format!("drill/drills/{id}/report.md")),
        md.as_bytes()
    );
    clean(&reports);
    // status reports the drill kept in the repository, for the alert rules.
    let prom = src.root.path().join("walvault.prom");
    let out = walvault(
        &["status", "--prometheus", prom.to_str().unwrap()],
        &a.pg_env(&src.env),
        None,
    );
    assert!(out.status.success(), "status: {}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    let metric = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit_once(' '))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .1
            .parse()
            .unwrap()
    };
    assert_eq!(metric("walvault_last_drill_passed"), 1.0);
    let finished = chrono::DateTime::parse_from_rfc3339(j["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis() as f64
        / 1000.0;
    assert!((metric("walvault_last_passed_drill_time_seconds") - finished).abs() < 0.01);
    assert_eq!(
        metric("walvault_last_drill_time_seconds"),
        metric("walvault_last_passed_drill_time_seconds")
    );
    assert!(
        (metric("walvault_last_drill_rto_seconds") - j["timings"]["rto_seconds"].as_f64().unwrap())
            .abs()
            < 0.01
    );

    // 2. Damage the data: an orphaned line. At a time before it the drill passes
    // and holds exactly the rows of then; at the end, the user check fails by name.
    let before = a.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(200));
    a.psql("insert into order_lines (order_id, qty) values (9999, 1)");
    src.flush_archive();
    let out = drill(
        &src.env,
        &scratch,
        &reports,
        &[
            &checks_arg[..],
            &["--target-time", before.trim(), "--no-upload"],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "drill before the damage: {}\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    let (j, _, _) = newest_report(&reports);
    assert_eq!(j["result"], "passed");
    assert!(j["rpo"]["target_gap_seconds"].as_f64().is_some());
    // Every user table, with exactly the rows of then: the orphan is not there.
    let mut tables: Vec<(String, String, i64)> = j["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["database"].as_str().unwrap().to_string(),
                r["table"].as_str().unwrap().to_string(),
                r["rows"].as_i64().unwrap(),
            )
        })
        .filter(|(_, t, _)| !t.starts_with("pg_catalog.") && !t.starts_with("information_schema."))
        .collect();
    tables.sort();
    assert_eq!(
        tables,
        vec![
            ("postgres".into(), "public.order_lines".into(), 2000),
            ("postgres".into(), "public.orders".into(), 700),
        ],
        "{:#}",
        j["tables"]
    );
    nothing_left(&scratch);
    clean(&reports);

    let out = drill(
        &src.env,
        &scratch,
        &reports,
        &[&checks_arg[..], &["--no-upload"]].concat(),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed check fails the drill: {}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("drill FAILED"), "{text}");
    assert!(
        text.contains("check 'no orphaned order lines' failed"),
        "{text}"
    );
    let (j, md, _) = newest_report(&reports);
    assert_eq!(j["result"], "failed");
    let orphan = j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "no orphaned order lines")
        .unwrap()
        .clone();
    assert_eq!(orphan["status"], "failed");
    assert!(
        orphan["detail"].as_str().unwrap().contains("9999"),
        "the report names what was found: {orphan:#}"
    );
    assert!(
        md.contains("| no orphaned order lines | user | postgres | **FAILED** |"),
        "{md}"
    );
    nothing_left(&scratch);
    clean(&reports);

    // 3. A missed objective fails the drill even when every check passes.
    std::thread::sleep(Duration::from_secs(3));
    let mut env = src.env.clone();
    env.insert("WALVAULT_DRILL_RPO_TARGET_SECONDS".into(), "1".into());
    let out = drill(&env, &scratch, &reports, &["--no-upload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (j, md, _) = newest_report(&reports);
    assert_eq!(j["objectives"]["rpo_met"], false);
    assert!(
        j["failures"][0]
            .as_str()
            .unwrap()
            .contains("RPO objective missed"),
        "{:#}",
        j["failures"]
    );
    assert!(md.contains("| RPO | 1 |") && md.contains("**NO**"), "{md}");
    nothing_left(&scratch);
    clean(&reports);

    // 4. A backup that does not exist: one clear line, nothing written.
    let out = drill(
        &src.env,
        &scratch,
        &reports,
        &["--backup", "20990101T000000Z"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("20990101T000000Z"), "{err}");
    assert_eq!(std::fs::read_dir(&reports).unwrap().count(), 0);
    nothing_left(&scratch);
    // A checks file that cannot be run is refused before anything is restored.
    let bad = src.root.path().join("bad.sql");
    std::fs::write(&bad, "select 1;\n").unwrap();
    chown_pg(&bad);
    let out = drill(
        &src.env,
        &scratch,
        &reports,
        &["--checks", bad.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SQL before the first '-- check: NAME' line"),
        "{}",
        stderr(&out)
    );
    nothing_left(&scratch);

    // 5. Ctrl-C while the scratch server runs (a slow user check holds it there):
    // the server is stopped, the directory removed, the report says why.
    let slow = src.root.path().join("slow.sql");
    std::fs::write(&slow, "-- check: slow\nselect pg_sleep(60) is not null;\n").unwrap();
    chown_pg(&slow);
    let mut cmd = pg_command(walvault_bin().to_str().unwrap(), &src.env);
    cmd.args(drill_args(
        &scratch,
        &reports,
        &[
            "--no-upload",
            "--no-amcheck",
            "--checks",
            slow.to_str().unwrap(),
        ],
    ))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = walvault_pid(child.id());
    let t = Instant::now();
    let mut pgdata = None;
    wait_for(
        "the scratch server to run",
        Duration::from_secs(120),
        || {
            pgdata = std::fs::read_dir(&scratch)
                .unwrap()
                .flatten()
                .map(|e| e.path().join("data"))
                .find(|d| d.join("postmaster.pid").exists());
            pgdata.is_some()
        },
    );
    let pgdata = pgdata.unwrap();
    // Into the slow check: the server has answered the built-in ones by then.
    wait_for("the slow check", Duration::from_secs(120), || {
        std::fs::read_to_string(pgdata.join("walvault-recover.log"))
            .is_ok_and(|l| l.contains("database system is ready to accept connections"))
    });
    let pidfile: Vec<String> = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let server_pid: i32 = pidfile[0].parse().unwrap();
    // The slow check's query is running on the scratch server (its port and
    // private socket directory are lines 4 and 5 of the pid file).
    wait_for("the slow check running", Duration::from_secs(120), || {
        let out = pg_command(&format!("{PG_BIN}/psql"), &BTreeMap::new())
            .args(["-X", "-A", "-t", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&pidfile[4])
            .args(["-p", &pidfile[3], "-c"])
            .arg("select count(*) from pg_stat_activity where query like '%pg_sleep(60)%' and pid <> pg_backend_pid()")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    });
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(55),
        "the interrupt did not cut the slow check"
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !process_alive(server_pid),
        "the scratch server must be stopped"
    );
    nothing_left(&scratch);
    let (j, _, _) = newest_report(&reports);
    assert_eq!(j["result"], "failed");
    assert!(
        j["failures"][0]
            .as_str()
            .unwrap()
            .contains("interrupted by SIGINT"),
        "{:#}",
        j["failures"]
    );
    s3.stop();
}
