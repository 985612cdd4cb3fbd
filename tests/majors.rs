//! Every supported PostgreSQL major, 13 to 18, end to end against its own real
//! server: the archive loop under pgbench, backup-push, an exact point-in-time
//! recovery between two commits, a recovery to the latest WAL with every row, a
//! promoted recovery (a timeline switch) and recovery across it, and a drill
//! with amcheck; the wrong major's binaries and an unsupported major refused.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// An encrypted local-directory repository, with the identity to read it back.
fn keyed_repo(root: &Path) -> BTreeMap<String, String> {
    let mut env = fs_repo(root);
    let idfile = root.join("identity.txt");
    let recipient = keygen(&idfile);
    env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
    env.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        idfile.display().to_string(),
    );
    env
}

/// `recover --start` into `name` with these extra arguments; the running cluster.
fn recover(
    root: &Path,
    name: &str,
    major: u32,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> (Cluster, String) {
    let mut c = Cluster::at_major(root, name, major);
    let mut all = c.recover_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = walvault(
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
        None,
    );
    let text = ok(&out, &format!("PostgreSQL {major}: recover {args:?}"));
    c.adopt();
    (c, text)
}

/// The whole life of one cluster of PostgreSQL `major`.
fn a_cluster_of(major: u32) {
    let root = pg_tempdir();
    let mut env = keyed_repo(root.path());
    // Debian's 15 is found where Debian puts it; the others are configured, as
    // on a host with several majors (PATH holds PostgreSQL 15's pg_ctl).
    if major != 15 {
        env.insert(
            format!("WALVAULT_POSTGRES_BIN_DIR_{major}"),
            server_bin(major).display().to_string(),
        );
    }
    let mut a = Cluster::init_major(root.path(), "a", major);
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on\nwal_keep_size = 512MB");
    a.start(&env);
    let version: u32 = a.psql("show server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "the server under test");
    if major >= 18 {
        // PostgreSQL 18's initdb turns page checksums on: backups must not mind.
        assert_eq!(a.psql("show data_checksums"), "on");
    }

    // The archive loop under pgbench, with a base backup taken under load.
    a.psql("create table t(i bigint primary key, note text)");
    a.pgbench(&["-i", "-s", "2", "-q"]);
    insert(&a, 1, 20);
    let backup = under_load(&a, || {
        let out = walvault(&["backup-push", "--fast"], &a.pg_env(&env), None);
        ok(&out, "backup-push").trim().to_string()
    });
    a.pgbench(&["-n", "-c", "2", "-j", "1", "-t", "300"]);
    insert(&a, 21, 40);
    a.flush_archive();
    assert_eq!(
        a.archiver_failed_count(),
        0,
        "PostgreSQL {major}: no push failed"
    );
    let scratch = root.path().join("fetched");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_pg(&scratch);
    let last = a.psql("select last_archived_wal from pg_stat_archiver");
    let segments = segment_range("000000010000000000000001", &last[..24]);
    for name in &segments {
        let local = std::fs::read(a.pgdata.join("pg_wal").join(name)).unwrap();
        assert!(
            fetched(&env, &scratch, name) == local,
            "PostgreSQL {major}: {name} fetched differs from pg_wal's"
        );
    }
    assert!(segments.len() >= 3, "{segments:?}");
    let listing = ok(&walvault(&["backup-list", "--json"], &env, None), "list");
    let listed: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let b = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == backup.as_str())
        .unwrap_or_else(|| panic!("{backup} not in {listing}"));
    assert_eq!(b["pg_version_num"].as_u64().unwrap() as u32, version);

    // Two commits with a noted time between them.
    insert(&a, 41, 41);
    std::thread::sleep(Duration::from_millis(50));
    let between = now_utc(&a);
    std::thread::sleep(Duration::from_millis(50));
    insert(&a, 42, 42);
    a.flush_archive();
    let bank = a.pgbench_checksum();
    a.stop();

    // The wrong major's binaries are refused before anything is written.
    let other = if major < 18 { major + 1 } else { major - 1 };
    let refused = root.path().join("refused");
    let mut wrong = env.clone();
    wrong.insert(
        format!("WALVAULT_POSTGRES_BIN_DIR_{major}"),
        server_bin(other).display().to_string(),
    );
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            refused.to_str().unwrap(),
            "--start",
            "--target",
            "latest",
        ],
        &wrong,
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("is of PostgreSQL {major}"))
            && err.contains(&format!("holds PostgreSQL {other}'s server")),
        "names both majors: {err}"
    );
    assert!(!refused.exists(), "nothing written");

    // Exact to the row between the two commits: paused there (watched through
    // each major's own pause function), and promoted.
    let (mut q, text) = recover(
        root.path(),
        "q",
        major,
        &["--target-time", &between, "--target-action", "pause"],
        &env,
    );
    assert!(text.contains("checked:  last replayed commit"), "{text}");
    assert_eq!(
        q.psql("select pg_is_in_recovery()"),
        "t",
        "paused at the target"
    );
    assert_eq!(
        summary(&q),
        expected(&[(1, 41)]),
        "PostgreSQL {major}: paused at the target"
    );
    q.stop();
    let (mut p, text) = recover(
        root.path(),
        "p",
        major,
        &[
            "--target-time",
            &between,
            "--archive",
            "--target-action",
            "promote",
        ],
        &env,
    );
    assert!(
        text.contains(&format!("server:   PostgreSQL {major} from")),
        "{text}"
    );
    assert!(text.contains("checked:  last replayed commit"), "{text}");
    p.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        summary(&p),
        expected(&[(1, 41)]),
        "PostgreSQL {major}: row 42 came after the target"
    );

    // The promoted cluster is on timeline 2 and archives into the same repository.
    assert_eq!(
        p.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    insert(&p, 100, 110);
    p.flush_archive();
    assert_eq!(p.archiver_failed_count(), 0);
    p.stop();

    // Latest: on timeline 1 every row and the bank; across the switch, timeline 2's rows.
    let (mut l1, text) = recover(
        root.path(),
        "l1",
        major,
        &["--target", "latest", "--target-timeline", "1"],
        &env,
    );
    assert!(text.contains("checked:"), "{text}");
    l1.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        summary(&l1),
        expected(&[(1, 42)]),
        "PostgreSQL {major}: every row"
    );
    assert_eq!(l1.pgbench_checksum(), bank);
    l1.stop();
    let (mut l2, _) = recover(root.path(), "l2", major, &["--target", "latest"], &env);
    l2.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        summary(&l2),
        expected(&[(1, 41), (100, 110)]),
        "PostgreSQL {major}: across the timeline switch"
    );
    l2.stop();

    // A drill on the latest timeline, with amcheck.
    let reports = root.path().join("reports");
    let drills = root.path().join("scratch");
    for dir in [&reports, &drills] {
        std::fs::create_dir_all(dir).unwrap();
        chown_pg(dir);
    }
    let out = walvault(
        &[
            "drill",
            "--scratch-dir",
            drills.to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
            "--no-upload",
        ],
        &env,
        None,
    );
    let text = ok(&out, "drill");
    assert!(text.contains("drill PASSED"), "{text}");
    let json = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("a JSON report");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let amcheck = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "amcheck on postgres")
        .unwrap_or_else(|| panic!("no amcheck in {report}"));
    assert_eq!(amcheck["status"], "passed", "{amcheck}");
    let detail = amcheck["detail"].as_str().unwrap();
    if major >= 14 {
        assert!(detail.contains("tables (verify_heapam)"), "{detail}");
    } else {
        assert!(
            detail.contains("verify_heapam needs PostgreSQL 14"),
            "{detail}"
        );
    }
    assert_eq!(report["target"]["timeline"], 2, "{report}");
}

#[test]
fn postgresql_13() {
    a_cluster_of(13);
}

#[test]
fn postgresql_14() {
    a_cluster_of(14);
}

#[test]
fn postgresql_15() {
    a_cluster_of(15);
}

#[test]
fn postgresql_16() {
    a_cluster_of(16);
}

#[test]
fn postgresql_17() {
    a_cluster_of(17);
}

#[test]
fn postgresql_18() {
    a_cluster_of(18);
}
