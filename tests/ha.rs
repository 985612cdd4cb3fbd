//! High availability: a primary and a streaming standby (both with the same
//! archive_command, both archiving with archive_mode = always, as Patroni
//! configures every node), one S3 repository. The standby is built from the
//! archive by `recover --standby`, backs up under load, is promoted while the
//! primary still writes; the old primary is rewound and rejoins. Every
//! recovery is checked row by row.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

/// primary_conninfo of a standby streaming from `c` (its Unix socket).
fn conninfo(c: &Cluster, name: &str) -> String {
    format!(
        "host={} port={} user=postgres application_name={name}",
        c.sockdir.display(),
        c.port
    )
}

/// What the WAL receiver of `c` says ("streaming", ...), or "" when none runs.
fn receiver(c: &Cluster) -> String {
    c.psql_try("select coalesce((select status from pg_stat_wal_receiver), '')")
        .unwrap_or_default()
}

/// Lines of walvault's errors in a server's log since `from`.
fn walvault_errors(c: &Cluster, from: u64) -> Vec<String> {
    c.log_since(from)
        .lines()
        .filter(|l| {
            l.contains("walvault wal-push: error") || l.contains("walvault wal-fetch: error")
        })
        .map(String::from)
        .collect()
}

/// Inserts rows `from..` into t on `c`, one commit each, until `stop`; the
/// last id committed is kept in `last`. A failed insert (the server stopped)
/// ends it.
fn insert_until(c: &Cluster, from: i64, stop: &AtomicBool, last: &AtomicI64) {
    let mut i = from;
    while !stop.load(Ordering::Relaxed) {
        if c.psql_try(&format!("insert into t values ({i}, 'row {i}')"))
            .is_err()
        {
            return;
        }
        last.store(i, Ordering::Relaxed);
        i += 1;
    }
}

/// `walvault recover --start` into a new cluster `name`, checked at its end.
fn recover(
    root: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Cluster {
    let (c, text) = recover_new(root, name, 15, args, env);
    assert!(text.contains("checked:"), "{text}");
    c
}

/// `walvault recover --standby --start` into `c` with these extra arguments:
/// checked consistent, adopted (this test stops it); what recover said.
fn recover_standby(
    c: &mut Cluster,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> std::process::Output {
    let mut all = c.recover_args();
    all.push("--standby".into());
    all.extend(args.iter().map(|s| s.to_string()));
    let out = walvault(
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
        None,
    );
    let text = ok(&out, &format!("recover --standby {args:?}"));
    assert!(text.contains("standby:  consistent at LSN"), "{text}");
    c.adopt();
    out
}

/// `standby` streams from `primary`, replays rows `from..=to` written there,
/// and archives (archive_mode = always) the primary's next segment; neither
/// server's log has a walvault error since the offsets given.
fn follows(
    standby: &Cluster,
    primary: &Cluster,
    (from, to): (i64, i64),
    (standby_log, primary_log): (u64, u64),
) {
    wait_for("the standby streaming", Duration::from_secs(60), || {
        receiver(standby) == "streaming"
    });
    insert(primary, from, to);
    let want = (to - from + 1).to_string();
    wait_for("the rows on the standby", Duration::from_secs(60), || {
        standby
            .psql_try(&format!(
                "select count(*) from t where i between {from} and {to}"
            ))
            .is_ok_and(|n| n == want)
    });
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(60));
    standby.wait_archived(&last, Duration::from_secs(60));
    assert_eq!(walvault_errors(standby, standby_log), Vec::<String>::new());
    assert_eq!(walvault_errors(primary, primary_log), Vec::<String>::new());
}

#[test]
fn a_standby_built_from_the_archive_backs_up_fails_over_and_the_old_primary_rejoins() {
    let weed = Seaweed::start();
    let root = pg_tempdir();
    let env = weed.walvault_env("ha");

    // The primary: the shipped snippet, plus what HA needs on every node.
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf(
        "archive_mode = always\narchive_timeout = 10\nwal_log_hints = on\n\
         track_commit_timestamp = on\nwal_keep_size = 512MB\nhot_standby = on",
    );
    a.start(&env);
    let a_log = a.log_len();
    a.psql("create table t(i bigint primary key, note text)");
    a.pgbench(&["-i", "-s", "1", "-q"]);
    insert(&a, 1, 50);
    let full = ok(
        &walvault(&["backup-push", "--fast"], &a.pg_env(&env), None),
        "backup-push on the primary",
    )
    .trim()
    .to_string();
    a.flush_archive();

    // 2. A replica from the archive (nothing read from the primary), which
    // then streams from the primary.
    let mut b = Cluster::at(root.path(), "b");
    recover_standby(&mut b, &["--primary-conninfo", &conninfo(&a, "b")], &env);
    assert!(b.pgdata.join("standby.signal").exists());
    assert!(!b.pgdata.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(b.pgdata.join("postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("primary_conninfo").count(), 1, "{auto}");
    assert!(!auto.contains("archive_mode = off"), "{auto}");
    let b_log = b.log_len();
    wait_for("the replica streaming", Duration::from_secs(60), || {
        receiver(&b) == "streaming"
    });
    insert(&a, 51, 60);
    wait_for(
        "rows 51..60 on the replica",
        Duration::from_secs(30),
        || b.psql_try("select count(*) from t").as_deref() == Ok("60"),
    );
    assert_eq!(summary(&b), expected(&[(1, 60)]));

    // 1. A backup from the standby under pgbench on the primary; the primary's
    // archive_timeout (10 s) bounds the wait for its last segment.
    let out = under_load(&a, || {
        walvault(&["backup-push", "--fast"], &b.pg_env(&env), None)
    });
    let from_standby = ok(&out, "backup-push on the standby").trim().to_string();
    let log = stderr(&out);
    assert!(log.contains("on a standby of"), "{log}");
    assert!(log.contains("stopped at"), "{log}");
    let m = manifest_json(&env, &from_standby);
    assert_eq!(m["taken_on"]["role"], "standby", "{m}");
    assert_eq!(manifest_json(&env, &full)["taken_on"]["role"], "primary");
    let list = ok(&walvault(&["backup-list"], &env, None), "backup-list");
    assert!(
        list.contains("TAKEN ON") && list.contains("(standby)"),
        "{list}"
    );
    insert(&a, 61, 80);
    std::thread::sleep(Duration::from_millis(50));
    let before_failover = now_utc(&a);
    std::thread::sleep(Duration::from_millis(50));
    insert(&a, 81, 100);

    // A standby replaying too far behind is refused, with the figures.
    b.psql("select pg_wal_replay_pause()");
    a.pgbench(&["-n", "-t", "5000", "-c", "2"]);
    wait_for(
        "WAL received while replay is paused",
        Duration::from_secs(30),
        || {
            b.psql("select pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) > 2 * 1024 * 1024")
            == "t"
        },
    );
    let out = walvault(
        &["backup-push", "--set", "backup.standby_max_lag_mb=1"],
        &b.pg_env(&env),
        None,
    );
    let (code, err) = failure(&out);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("replays")
            && err.contains("MiB behind its primary")
            && err.contains("standby_max_lag_mb is 1"),
        "{err}"
    );
    b.psql("select pg_wal_replay_resume()");
    wait_for(
        "rows 1..100 on the standby",
        Duration::from_secs(60),
        || b.psql_try("select count(*) from t").as_deref() == Ok("100"),
    );

    // 4. Both nodes archive (archive_mode = always): no refusal on either, each
    // segment stored once, the standby's pushes found identical.
    a.flush_archive();
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(60));
    b.wait_archived(&last, Duration::from_secs(60));
    assert_eq!(walvault_errors(&a, a_log), Vec::<String>::new());
    assert_eq!(walvault_errors(&b, b_log), Vec::<String>::new());
    // Whichever node pushes a segment second finds it identical.
    let identical = |c: &Cluster, from: u64| {
        c.log_since(from)
            .matches("already archived with identical content")
            .count()
    };
    assert!(
        identical(&a, a_log) + identical(&b, b_log) > 0,
        "no node pushed a segment the other had stored: {}",
        b.log_tail()
    );
    assert_eq!(a.archiver_failed_count(), 0);
    assert_eq!(b.archiver_failed_count(), 0);
    let keys = weed.list("ha/wal/");
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a segment stored twice: {keys:?}");

    // 3. Failover while the primary writes: rows go on committing on a until
    // it stops; those the standby received before its promotion are the
    // cluster's history from then on.
    let stop = AtomicBool::new(false);
    let last_on_a = AtomicI64::new(0);
    std::thread::scope(|sc| {
        let writer = sc.spawn(|| insert_until(&a, 1001, &stop, &last_on_a));
        under_load(&a, || {
            std::thread::sleep(Duration::from_secs(2));
            b.psql("select pg_promote()");
            b.wait_promoted(Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(500));
        });
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    a.stop();
    assert_eq!(
        b.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );
    let on_b: i64 = b.psql("select max(i) from t").parse().unwrap();
    assert!(on_b > 1000, "no row of the failover reached the standby");
    eprintln!(
        "failover: a committed up to {}, b had {} when promoted",
        last_on_a.load(Ordering::Relaxed),
        on_b
    );
    insert(&b, 2001, 2050);
    std::thread::sleep(Duration::from_millis(50));
    let after_failover = now_utc(&b);
    std::thread::sleep(Duration::from_millis(50));
    insert(&b, 2051, 2100);
    b.flush_archive();
    // The new timeline and its history, and the old timeline's last segment
    // as .partial, in the one repository.
    let keys = weed.list("ha/wal/");
    assert!(
        keys.iter().any(|k| k.ends_with("/00000002.history")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.contains("/00000001") && k.ends_with(".partial")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.contains("/00000002") && !k.ends_with(".history")),
        "{keys:?}"
    );

    // The old primary rewound and rejoined as a standby of b: it archives
    // too (always), and nothing it pushes is refused. pg_rewind reads the
    // source's timeline from its last checkpoint: a fresh primary takes one first.
    b.psql("checkpoint");
    let out = pg_command(
        server_bin(15).join("pg_rewind").to_str().unwrap(),
        &BTreeMap::new(),
    )
    .arg("-D")
    .arg(&a.pgdata)
    .arg("--source-server")
    .arg(format!(
        "host={} port={} user=postgres dbname=postgres",
        b.sockdir.display(),
        b.port
    ))
    .arg("-R")
    .output()
    .unwrap();
    assert!(out.status.success(), "pg_rewind: {}", stderr(&out));
    let a_log = a.log_len();
    a.start(&env);
    follows(&a, &b, (2101, 2110), (a_log, b_log));
    a.stop();

    // The other way back: the old primary rebuilt as a standby by a delta
    // restore from the archive (only what differs is written), streaming from b.
    let out = recover_standby(
        &mut a,
        &[
            "--delta",
            "--backup",
            &from_standby,
            "--primary-conninfo",
            &conninfo(&b, "a"),
        ],
        &env,
    );
    assert!(stderr(&out).contains("delta restore: "), "{}", stderr(&out));
    follows(&a, &b, (2111, 2120), (a.log_len(), b_log));
    // The switch as the key-less jobs show it: the new timeline, where it
    // branched, the old timeline's last segment kept as .partial.
    let verify = ok(&walvault(&["wal-verify"], &env, None), "wal-verify");
    assert!(
        verify.contains("timeline 2 branched from timeline 1 at")
            && verify.contains(".partial stored")
            && !verify.contains("NEVER ARCHIVED")
            && verify.contains("recoverable window: unbroken"),
        "{verify}"
    );
    let status = ok(&walvault(&["status"], &b.pg_env(&env), None), "status");
    assert!(
        status.contains("timeline       2: timeline 2 branched from timeline 1"),
        "{status}"
    );
    let rows_now = summary(&b);
    let bank_now = b.pgbench_checksum();
    a.stop();

    // Recoveries from the backup the standby took before the failover.
    // latest: every row that reached the standby, and every row after.
    let c = recover(
        root.path(),
        "latest",
        &["--backup", &from_standby, "--target", "latest"],
        &env,
    );
    assert_eq!(summary(&c), rows_now);
    assert_eq!(c.pgbench_checksum(), bank_now);
    drop(c);
    // A time after the failover, on timeline 2: exact.
    let c = recover(
        root.path(),
        "after",
        &["--backup", &from_standby, "--target-time", &after_failover],
        &env,
    );
    let kept = c.psql("select count(*) from t where i between 1001 and 2000");
    assert_eq!(
        c.psql("select count(*) from t where i > 2000"),
        "50",
        "rows 2001..2050 and none after"
    );
    assert_eq!(
        c.psql("select max(i) from t where i < 2000"),
        on_b.to_string()
    );
    assert!(kept.parse::<i64>().unwrap() > 0);
    drop(c);
    // A time before the failover, on timeline 1: exact.
    let c = recover(
        root.path(),
        "before",
        &["--backup", &from_standby, "--target-time", &before_failover],
        &env,
    );
    assert_eq!(summary(&c), expected(&[(1, 80)]));
    drop(c);
    b.stop();
}

/// cutime + cstime of a process (its reaped children's CPU), in seconds.
fn children_cpu(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    // Fields 16 and 17 of proc(5), counted from the state (field 3).
    let ticks: u64 = rest[13].parse::<u64>().unwrap() + rest[14].parse::<u64>().unwrap();
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The pids of running processes whose command line names `exe` and whose
/// working directory is `dir` (PostgreSQL runs restore_command in its data
/// directory; other suites' walvault processes run elsewhere).
fn processes_of(exe: &std::path::Path, dir: &std::path::Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let want = exe.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(want.len()).any(|w| w == want))
                && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|d| d == dir)
        })
        .collect()
}

/// A standby that follows the archive only (no streaming) polls for segments
/// that do not exist yet, every 5 s, for as long as it runs. Idle for
/// TEST_IDLE_SECONDS (600 unless set): walvault's processes stay bounded, none
/// is left running, the spool stays empty, PostgreSQL's log gets no line of
/// walvault's per poll, and the CPU its calls cost is measured.
#[test]
fn an_archive_following_standby_idles_cheaply() {
    let idle: u64 = std::env::var("TEST_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let weed = Seaweed::start();
    let root = pg_tempdir();
    let env = weed.walvault_env("idle");
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.start(&env);
    a.psql("create table t(i bigint primary key, note text)");
    insert(&a, 1, 10);
    ok(
        &walvault(&["backup-push", "--fast"], &a.pg_env(&env), None),
        "backup-push",
    );
    insert(&a, 11, 20);
    a.flush_archive();
    a.stop();

    // The standby made as Patroni makes a replica with examples/patroni/:
    // its replica-creation script with Patroni's arguments (no leader
    // running: an empty connstring), then pg_ctl start.
    let script = root.path().join("walvault-patroni-replica");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/patroni/walvault-patroni-replica"
        ),
        &script,
    )
    .unwrap();
    let mut b = Cluster::at(root.path(), "b");
    let mut patroni_env = env.clone();
    patroni_env.insert("WV_CMD".into(), wrapper_bin().display().to_string());
    let out = pg_command(script.to_str().unwrap(), &patroni_env)
        .args(["--scope=idle", "--role=replica", "--connstring="])
        .arg(format!("--datadir={}", b.pgdata.display()))
        .output()
        .unwrap();
    ok(&out, "walvault-patroni-replica");
    assert!(b.pgdata.join("standby.signal").exists());
    b.start(&env);
    assert_eq!(summary(&b), expected(&[(1, 20)]));
    assert_eq!(receiver(&b), "", "it follows the archive only");
    assert_eq!(b.psql("select pg_is_in_recovery()"), "t");
    let postmaster = b.pid().unwrap();
    let ps = std::process::Command::new("ps")
        .args(["--ppid", &postmaster.to_string(), "-o", "pid=,args="])
        .output()
        .unwrap();
    let startup: i32 = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| l.contains("startup"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the standby's startup process");
    // Past the first polls (and whatever prefetcher the restored segments started).
    std::thread::sleep(Duration::from_secs(15));
    let log_from = b.log_len();
    let cpu0 = children_cpu(startup);
    let t0 = std::time::Instant::now();
    // Segments in the prefetch spool (its log and directory aside).
    let spool = b.pgdata.join("pg_wal/walvault_prefetch/wal");
    let mut most = 0;
    while t0.elapsed() < Duration::from_secs(idle) {
        most = most.max(processes_of(walvault_bin(), &b.pgdata).len());
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu = children_cpu(startup) - cpu0;
    let secs = t0.elapsed().as_secs_f64();
    let per_day = cpu * 86_400.0 / secs;
    let logged = b.log_since(log_from);
    let spooled = std::fs::read_dir(&spool).map_or(0, |d| d.count());
    eprintln!(
        "idle archive-following standby: {secs:.0} s, walvault's calls used {cpu:.2} s of CPU ({per_day:.0} s a day, {:.3}% of a core); at most {most} walvault process(es) at once; {} line(s) of server log, {} of them PostgreSQL's own \"waiting for WAL\", none walvault's; {spooled} file(s) in the spool",
        cpu * 100.0 / secs,
        logged.lines().count(),
        logged.matches("waiting for WAL to become available").count()
    );
    // One poll at a time: its `sh -c` (naming the wrapper beside the binary)
    // and walvault itself.
    assert!(most <= 3, "{most} walvault processes at once");
    // A poll lasts milliseconds: whatever runs now is gone in 2 s.
    let now = processes_of(walvault_bin(), &b.pgdata);
    std::thread::sleep(Duration::from_secs(2));
    let later = processes_of(walvault_bin(), &b.pgdata);
    let stays: Vec<&i32> = now.iter().filter(|p| later.contains(p)).collect();
    assert!(stays.is_empty(), "walvault processes stay: {stays:?}");
    assert_eq!(spooled, 0, "the spool grew");
    // Nothing of walvault's per poll: only PostgreSQL's own "waiting for WAL
    // to become available" (its LOG line at each poll of a standby without a
    // WAL receiver) and a restartpoint's lines now and then.
    let own = logged
        .lines()
        .filter(|l| !l.contains("waiting for WAL to become available"))
        .count() as u64;
    assert!(
        !logged.contains("walvault") && own < idle / 60 + 4,
        "the standby's polls fill its log:\n{logged}"
    );
    // Measured at about 0.4% of one core (a process start per poll, most of
    // it the kernel mapping the binary); past 1% something polls harder.
    assert!(cpu / secs < 0.01, "{cpu:.2} s of CPU in {secs:.0} s");
    assert_eq!(summary(&b), expected(&[(1, 20)]));
    // A standby with no WAL receiver is no place for a backup: it may be
    // arbitrarily behind its primary.
    let out = walvault(&["backup-push"], &b.pg_env(&env), None);
    let (code, err) = failure(&out);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a standby that does not stream"), "{err}");
    b.stop();
}

/// `push.max_backlog`: with the repository down and the bound reached, the
/// oldest waiting segments are dropped on purpose (PostgreSQL may recycle
/// them), each logged at error level; once S3 is back archiving resumes, the
/// drops are recorded in the repository, and wal-verify, backup-list and
/// status name the gap as deliberate.
#[test]
fn push_max_backlog_drops_segments_while_s3_is_down_and_records_the_gap() {
    let mut weed = Seaweed::start();
    let root = pg_tempdir();
    let mut env = weed.walvault_env("backlog");
    env.insert("WALVAULT_PUSH_MAX_BACKLOG".into(), "3".into());
    env.insert("WALVAULT_S3_MAX_ATTEMPTS".into(), "1".into());
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("wal_keep_size = 256MB");
    a.start(&env);
    a.psql("create table t(i bigint primary key, note text)");
    insert(&a, 1, 10);
    ok(
        &walvault(&["backup-push", "--fast"], &a.pg_env(&env), None),
        "backup-push",
    );
    a.flush_archive();
    let from = a.log_len();

    // Six segments while the repository is down: the first four are dropped
    // (6, 5, 4 then 3 files waiting), the last two wait under the bound.
    weed.stop();
    let mut closed = Vec::new();
    for k in 0..6 {
        insert(&a, 11 + k * 10, 20 + k * 10);
        closed.push(a.switch_wal());
    }
    wait_for("four segments dropped", Duration::from_secs(180), || {
        a.log_since(from)
            .matches("is DROPPED from the archive")
            .count()
            == 4
            && ready_files(&a.pgdata).len() == 2
    });
    let journal = a.pgdata.join("pg_wal/walvault_skipped");
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap().lines().count(),
        4
    );
    let logged = a.log_since(from);
    for s in &closed[..4] {
        assert!(
            logged.contains(&format!("{s} is DROPPED from the archive")),
            "{s}: {logged}"
        );
    }

    // S3 back: archiving resumes and the drops reach the repository.
    weed.restart();
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(180));
    wait_for("the drops recorded", Duration::from_secs(60), || {
        weed.list("backlog/gaps/").len() == 4 && !journal.exists()
    });
    let stored = stored_segments(&weed, "backlog");
    for s in &closed[..4] {
        assert!(!stored.contains(s), "{s} was dropped, yet stored");
    }
    for s in closed[4..].iter().chain([&last]) {
        assert!(stored.contains(s), "{s} lost");
    }

    let out = walvault(&["wal-verify"], &env, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "the window is broken: {text}");
    assert!(
        text.contains(&format!(
            "GAP {} .. {} (4 segments, DROPPED on purpose by push.max_backlog",
            closed[0], closed[3]
        )),
        "{text}"
    );
    let list = ok(&walvault(&["backup-list"], &env, None), "backup-list");
    assert!(
        list.contains(&format!(
            "WAL GAP: segment {} is missing (DROPPED on purpose by push.max_backlog",
            closed[0]
        )),
        "{list}"
    );
    let status = ok(&walvault(&["status"], &a.pg_env(&env), None), "status");
    assert!(
        status.contains(&format!(
            "WAL GAP at {} (DROPPED on purpose by push.max_backlog",
            closed[0]
        )),
        "{status}"
    );
    let prom = root.path().join("walvault.prom");
    walvault(
        &["status", "--prometheus", prom.to_str().unwrap()],
        &a.pg_env(&env),
        None,
    );
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("walvault_wal_dropped_segments{") && l.ends_with(" 4")),
        "{metrics}"
    );
    a.stop();
}

/// pg_rewind as a client of wal-fetch: after a failover, the old primary has
/// recycled the WAL from before the fork that pg_rewind reads, so plain
/// pg_rewind fails; `--restore-target-wal` runs the old primary's
/// restore_command (walvault's, from archive-command/) and the old primary
/// rejoins as a standby of the new one.
#[test]
fn pg_rewind_restores_recycled_target_wal_through_wal_fetch() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on\nwal_log_hints = on\nmin_wal_size = '32MB'\nmax_wal_size = '32MB'\nwal_keep_size = 0");
    a.start(&env);
    let s = Source {
        root,
        a,
        env: env.clone(),
    };
    let a = &s.a;
    a.psql("create table t (i bigint primary key, note text)");
    insert(a, 1, 10);
    s.backup();
    insert(a, 11, 20);
    s.flush_archive();
    // The failover: a copy recovered to the end of the archive and promoted
    // (timeline 2); the old primary goes on writing on timeline 1.
    let mut b = s.recover("b", &["--archive"]);
    b.psql("checkpoint");
    insert(a, 21, 30);
    a.psql("create table filler as select g, md5(g::text) m from generate_series(1, 300000) g");
    for _ in 0..6 {
        a.psql("insert into filler select g, 'x' from generate_series(1, 20000) g");
        a.switch_wal();
        a.psql("checkpoint");
    }
    s.flush_archive();
    let mut a = s.a;
    a.stop();
    let rewind = |extra: &[&str]| {
        pg_command(server_bin(15).join("pg_rewind").to_str().unwrap(), &env)
            .arg("-D")
            .arg(&a.pgdata)
            .arg("--source-server")
            .arg(format!(
                "host={} port={} user=postgres dbname=postgres",
                b.sockdir.display(),
                b.port
            ))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = rewind(&[]);
    assert!(
        !out.status.success() && stderr(&out).contains("could not open file"),
        "the WAL before the fork is still in pg_wal, the test proves nothing: {}",
        stderr(&out)
    );
    let out = rewind(&["--restore-target-wal", "-R"]);
    assert!(out.status.success(), "pg_rewind -c: {}", stderr(&out));
    a.start(&env);
    insert(&b, 31, 40);
    wait_for(
        "the rewound primary follows",
        Duration::from_secs(60),
        || {
            a.psql_try("select count(*) from t")
                .is_ok_and(|c| c == "30")
        },
    );
    assert_eq!(summary(&a), expected(&[(1, 20), (31, 40)]));
    assert_eq!(a.psql("select pg_is_in_recovery()"), "t");
    a.stop();
    b.stop();
}
