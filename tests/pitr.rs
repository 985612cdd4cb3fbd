//! Base backups and point-in-time recovery against real PostgreSQL 15 (and
//! SeaweedFS): recoveries land exactly on their targets.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn ids(c: &Cluster, table: &str) -> Vec<i64> {
    let s = c.psql(&format!(
        "select coalesce(string_agg(i::text, ',' order by i), '') from {table}"
    ));
    if s.is_empty() {
        return vec![];
    }
    s.split(',').map(|x| x.parse().unwrap()).collect()
}

/// Inserts rows `range` one transaction each; returns (i, commit time, xid, LSN after commit).
fn insert_rows(
    c: &Cluster,
    range: std::ops::RangeInclusive<i64>,
) -> Vec<(i64, String, String, String)> {
    let mut out = Vec::new();
    for i in range {
        let r = c.psql(&format!(
            "insert into t values ({i}) returning txid_current()::text || '|' || pg_current_wal_insert_lsn()::text"
        ));
        let (xid, _) = r.split_once('|').unwrap();
        let lsn = c.psql("select pg_current_wal_insert_lsn()");
        let ts = c.psql(&format!(
            "select pg_xact_commit_timestamp(xmin) from t where i = {i}"
        ));
        out.push((i, ts, xid.to_string(), lsn));
        std::thread::sleep(Duration::from_millis(30));
    }
    out
}

/// A time strictly between two commit timestamps (PostgreSQL's text form, UTC).
fn between(c: &Cluster, t1: &str, t2: &str) -> String {
    c.psql(&format!(
        "select to_char(('{t1}'::timestamptz + ('{t2}'::timestamptz - '{t1}'::timestamptz) / 2) at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    ))
}

fn range(a: i64, b: i64) -> Vec<i64> {
    (a..=b).collect()
}

/// Test 1: every target kind lands exactly between two commits.
#[test]
fn pitr_lands_exactly_on_each_target_kind() {
    let mut s = source(fs_repo);
    s.a.psql("create table t(i bigint primary key)");
    insert_rows(&s.a, 1..=5);
    let id = s.backup();
    let mut rows = insert_rows(&s.a, 6..=15);
    s.a.psql("select pg_create_restore_point('after_15')");
    rows.extend(insert_rows(&s.a, 16..=25));
    s.flush_archive();
    let by = |i: i64| rows.iter().find(|r| r.0 == i).unwrap().clone();

    let t = between(&s.a, &by(12).1, &by(13).1);
    let b = s.recover("by_time", &["--target-time", &t]);
    assert_eq!(ids(&b, "t"), range(1, 12), "target time {t}");
    drop(b);

    // Exclusive stop just before the target commit.
    let b = s.recover(
        "by_time_exclusive",
        &["--target-time", &by(9).1, "--exclusive"],
    );
    assert_eq!(ids(&b, "t"), range(1, 8));
    drop(b);

    let b = s.recover("by_lsn", &["--target-lsn", &by(10).3]);
    assert_eq!(ids(&b, "t"), range(1, 10));
    drop(b);

    let b = s.recover("by_xid", &["--target-xid", &by(17).2]);
    assert_eq!(ids(&b, "t"), range(1, 17));
    drop(b);

    let b = s.recover("by_name", &["--target-name", "after_15"]);
    assert_eq!(ids(&b, "t"), range(1, 15));
    drop(b);

    let b = s.recover("immediate", &["--target", "immediate", "--backup", &id]);
    assert_eq!(ids(&b, "t"), range(1, 5), "the backup alone");
    drop(b);

    let b = s.recover("latest", &[]);
    assert_eq!(ids(&b, "t"), range(1, 25));
    assert_eq!(
        b.psql("select current_setting('archive_mode')"),
        "off",
        "a restored copy does not archive"
    );
    drop(b);

    let list = walvault(&["backup-list"], &s.env, None);
    let text = String::from_utf8_lossy(&list.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed: {text}"));
    assert!(row.ends_with("  complete"), "{row}");
    // The window opens where the backup ends, on timeline 1.
    let json = walvault(&["backup-list", "--json"], &s.env, None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let stop: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["backups"][0]["stop_time"].clone()).unwrap();
    assert_eq!(v["window"]["timeline"], 1);
    assert!(
        text.contains(&format!("recoverable window: {} .. ", stop.to_rfc3339())),
        "{text}"
    );
    s.a.stop();
}

/// Test 1 on S3, and test 2: the accidental DROP TABLE.
#[test]
fn drop_table_undone_from_s3() {
    let weed = Seaweed::start();
    let mut s = source(|_| weed.walvault_env("pitr"));
    s.a.psql("create table t(i bigint primary key)");
    insert_rows(&s.a, 1..=3);
    s.backup();
    s.a.psql("create table orders(id int primary key, item text)");
    s.a.psql("insert into orders select g, 'lot-' || g from generate_series(1, 5000) g");
    let rows = insert_rows(&s.a, 4..=6);
    let before_drop = s.a.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(200));
    s.a.psql("drop table orders");
    insert_rows(&s.a, 7..=8);
    s.flush_archive();

    let b = s.recover("undrop", &["--target-time", &before_drop]);
    assert_eq!(
        b.psql("select count(*) || ':' || sum(id) from orders"),
        "5000:12502500"
    );
    assert_eq!(ids(&b, "t"), range(1, 6));
    drop(b);
    let t = between(&s.a, &rows[0].1, &rows[1].1);
    let b = s.recover("s3_time", &["--target-time", &t]);
    assert_eq!(ids(&b, "t"), range(1, 4));
    drop(b);
    s.a.stop();
}

/// Test 3: recover and promote (timeline 2) with archiving, write more, then
/// recover again to a time on timeline 2 through its history file.
#[test]
fn recovery_follows_a_new_timeline() {
    let mut s = source(fs_repo);
    s.a.psql("create table t(i bigint primary key)");
    insert_rows(&s.a, 1..=3);
    let first = s.backup();
    insert_rows(&s.a, 4..=6);
    s.flush_archive();
    s.a.stop();

    let mut b = s.recover("tl2", &["--archive"]);
    assert_eq!(
        b.psql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    b.psql("checkpoint");
    let rows = insert_rows(&b, 100..=105);
    let seg = b.switch_wal();
    b.wait_archived(&seg, Duration::from_secs(120));
    let repo = s.root.path().join("repo/wal");
    assert!(repo.join("00000002.history").exists(), "history archived");
    let t = between(&b, &rows[2].1, &rows[3].1);
    // A backup taken on timeline 2, and more rows after it.
    let out = walvault(&["backup-push", "--fast"], &b.pg_env(&s.env), None);
    assert!(
        out.status.success(),
        "backup-push on timeline 2: {}",
        stderr(&out)
    );
    let on_tl2 = String::from_utf8(out.stdout).unwrap().trim().to_string();
    insert_rows(&b, 106..=108);
    let seg = b.switch_wal();
    b.wait_archived(&seg, Duration::from_secs(120));
    b.stop();

    let c = s.recover("on_tl2", &["--target-time", &t]);
    assert_eq!(ids(&c, "t"), vec![1, 2, 3, 4, 5, 6, 100, 101, 102]);
    let log = std::fs::read_to_string(c.pgdata.join("walvault-recover.log")).unwrap();
    assert!(
        log.contains("restored log file \"00000002.history\""),
        "history used: {log}"
    );
    drop(c);
    // Timeline 1 explicitly: the rows of timeline 2 are not there.
    let c = s.recover("on_tl1", &["--target-timeline", "1"]);
    assert_eq!(ids(&c, "t"), range(1, 6));
    drop(c);

    // The timeline-2 backup, restored and promoted: timeline 3, archived.
    let json = walvault(&["backup-list", "--json"], &s.env, None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let listed = v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == on_tl2.as_str())
        .unwrap_or_else(|| panic!("{on_tl2} listed: {v:#}"));
    assert_eq!(listed["timeline"], 2, "{listed:#}");
    let mut d = s.recover("tl3", &["--backup", &on_tl2, "--archive"]);
    assert_eq!(
        d.psql("select timeline_id from pg_control_checkpoint()"),
        "3"
    );
    let tl2_rows = [range(1, 6), range(100, 108)].concat();
    assert_eq!(ids(&d, "t"), tl2_rows, "the end of timeline 2");
    d.psql("checkpoint");
    insert_rows(&d, 200..=202);
    let seg = d.switch_wal();
    d.wait_archived(&seg, Duration::from_secs(120));
    assert!(repo.join("00000003.history").exists(), "history archived");
    d.stop();
    // Latest follows timeline 3 through both history files, from either backup.
    let all = [tl2_rows.clone(), range(200, 202)].concat();
    let e = s.recover("across_tl3", &[]);
    assert_eq!(ids(&e, "t"), all, "from the newest backup, on timeline 3");
    drop(e);
    let e = s.recover("tl1_backup_to_tl3", &["--backup", &first]);
    assert_eq!(
        ids(&e, "t"),
        all,
        "from timeline 1's backup, across 2 and 3"
    );
    let log = std::fs::read_to_string(e.pgdata.join("walvault-recover.log")).unwrap();
    assert!(
        log.contains("restored log file \"00000003.history\""),
        "history used: {log}"
    );
}

/// Test 4 and 5: a backup under pgbench load restores to the same data, and a
/// tablespace comes back at a mapped location.
#[test]
fn backup_under_load_with_a_tablespace() {
    let mut s = source(fs_repo);
    let ts_dir = s.root.path().join("ts1");
    std::fs::create_dir(&ts_dir).unwrap();
    chown_pg(&ts_dir);
    s.a.psql(&format!(
        "create tablespace ts1 location '{}'",
        ts_dir.display()
    ));
    s.a.psql("create table lots(id int primary key, note text) tablespace ts1");
    s.a.psql("insert into lots select g, repeat('x', 100) from generate_series(1, 20000) g");
    s.a.pgbench(&["-i", "-s", "3", "-q"]);

    let load = {
        let (sock, port) = (s.a.sockdir.clone(), s.a.port);
        std::thread::spawn(move || {
            let out = pg_command(&format!("{PG_BIN}/pgbench"), &BTreeMap::new())
                .args([
                    "-n", "-c", "2", "-j", "2", "-T", "12", "-U", "postgres", "-h",
                ])
                .arg(&sock)
                .arg("-p")
                .arg(port.to_string())
                .arg("postgres")
                .output()
                .unwrap();
            assert!(out.status.success(), "pgbench: {}", stderr(&out));
        })
    };
    // The backup starts while both pgbench clients are connected and writing.
    wait_for("pgbench running", Duration::from_secs(30), || {
        s.a.psql("select count(*) from pg_stat_activity where application_name = 'pgbench' and xact_start is not null") == "2"
    });
    s.backup();
    load.join().unwrap();
    s.a.psql("select pg_create_restore_point('after_load')");
    let expected = s.a.pgbench_checksum();
    s.a.psql("insert into lots values (0, 'after the restore point')");
    s.flush_archive();
    let oid =
        s.a.psql("select oid from pg_tablespace where spcname = 'ts1'");

    let mapped = s.root.path().join("ts1-restored");
    let map = format!("{oid}={}", mapped.display());
    let b = s.recover(
        "loaded",
        &["--target-name", "after_load", "--tablespace-map", &map],
    );
    assert_eq!(
        b.pgbench_checksum(),
        expected,
        "pgbench tables match the source at the target"
    );
    assert_eq!(b.psql("select count(*) from lots"), "20000");
    let link = std::fs::read_link(b.pgdata.join("pg_tblspc").join(&oid)).unwrap();
    assert_eq!(link, mapped);
    assert!(
        b.psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'ts1'")
            == mapped.display().to_string()
    );
    drop(b);
    s.a.stop();
}

/// Test 6: a backup-push killed mid-way leaves no listed backup; the next one works.
#[test]
fn killed_backup_is_never_listed() {
    let mut s = source(fs_repo);
    s.a.pgbench(&["-i", "-s", "8", "-q"]);
    let mut env = s.a.pg_env(&s.env);
    env.insert("WALVAULT_BACKUP_PART_SIZE_MB".into(), "8".into());
    env.insert("WALVAULT_BACKUP_CONCURRENCY".into(), "1".into());
    env.insert("WALVAULT_COMPRESSION_LEVEL".into(), "12".into());
    use std::os::unix::process::CommandExt;
    let mut child = pg_command(walvault_bin().to_str().unwrap(), &env)
        .args(["backup-push", "--fast"])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(s.root.path().join("killed.log")).unwrap())
        .spawn()
        .unwrap();
    let backups = s.root.path().join("repo/backups");
    let log = s.root.path().join("killed.log");
    let t = std::time::Instant::now();
    while !std::fs::read_dir(&backups)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.path().join("part-0000.tar").exists())
        })
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no backup part after 120 s; walvault said: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();

    let out = walvault(&["backup-list"], &s.env, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no complete backups"), "{text}");
    assert!(
        text.contains("incomplete (no manifest"),
        "the trace is reported: {text}"
    );
    let out = walvault(
        &["recover", "--pgdata", "/tmp/never", "--dry-run"],
        &s.env,
        None,
    );
    assert!(
        !out.status.success() && stderr(&out).contains("no complete backup"),
        "{}",
        stderr(&out)
    );

    let killed: Vec<String> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");

    // The next backup-push takes the killed one over (backup::resume) and completes it.
    let id = s.backup();
    assert_eq!(id, killed[0], "the interrupted backup is resumed");
    let out = walvault(&["backup-list", "--json"], &s.env, None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backups"].as_array().unwrap().len(), 1);
    assert_eq!(v["backups"][0]["id"], id.as_str());
    assert_eq!(v["backups"][0]["wal_complete"], true);
    assert_eq!(
        v["window"]["from"], v["backups"][0]["stop_time"],
        "the window opens where the only complete backup ends"
    );
    assert_eq!(v["incomplete"].as_array().unwrap().len(), 0);
    s.a.stop();
}

/// Test 7: every refusal is one line, exits non-zero and writes nothing.
#[test]
fn refusals_are_clear_and_write_nothing() {
    let root_id = std::cell::RefCell::new(PathBuf::new());
    let mut s = source(|root| {
        let mut env = fs_repo(root);
        let idfile = root.join("identity.txt");
        env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), keygen(&idfile));
        *root_id.borrow_mut() = idfile;
        env
    });
    s.a.psql("create table t(i bigint primary key)");
    let before_backup = s.a.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(100));
    s.backup();
    insert_rows(&s.a, 1..=3);
    s.flush_archive();

    // Encrypted, and no identity file configured.
    let e = s.recover_fails(&["--target", "latest"]);
    assert!(e.contains("identity_file"), "{e}");
    s.env.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        root_id.borrow().display().to_string(),
    );
    let e = s.recover_fails(&["--target-time", &before_backup]);
    assert!(e.contains("before the earliest backup"), "{e}");
    insert_rows(&s.a, 4..=4);
    std::thread::sleep(Duration::from_millis(1500));
    let now = s.a.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    let e = s.recover_fails(&["--target-time", &now]);
    assert!(e.contains("after the end of the archived WAL"), "{e}");
    let e = s.recover_fails(&["--target-time", "yesterday"]);
    assert!(e.contains("cannot read target time"), "{e}");
    let e = s.recover_fails(&["--target-time", "2026-01-01 10:00:00"]);
    assert!(e.contains("no time zone"), "{e}");
    let e = s.recover_fails(&["--target-time", "2999-01-01 10:00:00+00"]);
    assert!(e.contains("in the future"), "{e}");
    let e = s.recover_fails(&["--backup", "20200101T000000Z"]);
    assert!(e.contains("does not exist"), "{e}");
    let e = s.recover_fails(&["--target-lsn", "banana"]);
    assert!(e.contains("not an LSN"), "{e}");

    // A time inside a backup (after its start, before its end): that backup
    // cannot stop there (PostgreSQL must replay to its end first), so naming it
    // is refused; left to choose, walvault takes the backup before and lands
    // exactly.
    let inside_id = s.backup();
    // A commit after it, archived: a time target stops at the first commit past it.
    insert_rows(&s.a, 5..=5);
    s.flush_archive();
    let json = walvault(&["backup-list", "--json"], &s.env, None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let m = v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == inside_id.as_str())
        .unwrap();
    let at = |k: &str| -> chrono::DateTime<chrono::Utc> {
        serde_json::from_value(m[k].clone()).unwrap()
    };
    let (start, stop) = (at("start_time"), at("stop_time"));
    assert!(stop > start, "{m:#}");
    let inside = (start + (stop - start) / 2)
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string();
    let e = s.recover_fails(&["--backup", &inside_id, "--target-time", &inside]);
    assert!(
        e.contains(&format!("is before backup {inside_id} ended")),
        "{e}"
    );
    let b = s.recover("inside", &["--target-time", &inside]);
    assert_eq!(ids(&b, "t"), range(1, 4), "from the backup before");
    drop(b);

    // A non-empty directory is refused and left as it was.
    let busy = s.root.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("precious"), "keep me").unwrap();
    chown_pg(&busy);
    let out = walvault(
        &["recover", "--pgdata", busy.to_str().unwrap()],
        &s.env,
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(busy.join("precious")).unwrap(),
        "keep me"
    );
    // Even told to overwrite, a dry run touches nothing.
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            busy.to_str().unwrap(),
            "--overwrite",
            "--dry-run",
        ],
        &s.env,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(busy.join("precious")).unwrap(),
        "keep me"
    );

    // With the identity, a dry run plans and writes nothing.
    let dry = s.root.path().join("dry");
    let out = walvault(
        &["recover", "--pgdata", dry.to_str().unwrap(), "--dry-run"],
        &s.env,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dry run: nothing written"));
    assert!(!dry.exists());
    s.a.stop();
}
