//! `walvault wal-receive` against a real PostgreSQL 15 beside its archive_command:
//! the repository trails commits by about flush_seconds (and not at all in
//! synchronous mode), holds the server's own bytes, survives a SIGKILL of the
//! receiver, and refuses what it must in one line.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use walvault::store::Store;
use walvault::wal::names::Lsn;
use walvault::wal::stream;

const SEG: u64 = 16 << 20;

struct Repo {
    store: walvault::store::fs::FsStore,
    codec: walvault::codec::Codec,
    rt: tokio::runtime::Runtime,
}

impl Repo {
    /// The repository below `root` (a test's fs_repo), read without a key.
    fn at(root: &std::path::Path) -> Repo {
        Repo {
            store: walvault::store::fs::FsStore::new(root.join("repo")),
            codec: walvault::codec::Codec::new(1, vec![], None),
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    /// The furthest position the repository holds on timeline 1.
    fn held(&self) -> Lsn {
        self.held_on(1)
    }

    /// How far the repository holds timeline `tli`: whole segments and stream objects.
    fn held_on(&self, tli: u32) -> Lsn {
        self.rt.block_on(async {
            let keys = self.store.list("").await.unwrap();
            held_by(tli, keys.into_iter().map(|o| o.key))
        })
    }

    /// What the stream objects hold of the segment holding `at`, chained
    /// and decoded, with how many objects that took.
    fn streamed(&self, at: Lsn) -> Option<(usize, Vec<u8>)> {
        self.streamed_on(1, at)
    }

    /// [`Repo::streamed`] on timeline `tli`.
    fn streamed_on(&self, tli: u32, at: Lsn) -> Option<(usize, Vec<u8>)> {
        self.rt.block_on(async {
            let seg = walvault::wal::names::SegmentName::from_segno(tli, at.0 / SEG, SEG);
            let chain = stream::chain(&stream::list(&self.store, &seg).await.unwrap());
            if chain.is_empty() {
                return None;
            }
            let bytes = stream::assemble(&self.store, &self.codec, &chain, Vec::new())
                .await
                .unwrap()
                .unwrap();
            Some((chain.len(), bytes))
        })
    }
}

/// The furthest position on timeline 1 a repository holds, from its keys:
/// how far the stream pieces of a segment reach from its start, or the end
/// of the newest complete segment.
fn held_by(tli: u32, keys: impl IntoIterator<Item = String>) -> Lsn {
    let keys: Vec<String> = keys.into_iter().collect();
    let mut held = 0;
    let pieces = keys
        .iter()
        .filter_map(|k| stream::parse(k))
        .filter(|p| p.seg.tli == tli);
    for (seg, reach) in stream::reach(pieces) {
        held = held.max(seg.segno(SEG).unwrap() * SEG + reach);
    }
    for k in keys.iter().filter_map(|k| k.strip_prefix("wal/")) {
        if let Ok(walvault::wal::names::WalFile::Segment(s)) =
            walvault::wal::names::WalFile::parse(k)
        {
            if s.tli == tli {
                held = held.max((s.segno(SEG).unwrap() + 1) * SEG);
            }
        }
    }
    Lsn(held)
}

/// A receiver running; its stderr goes to a file (a pipe nobody reads would
/// fill and stop it).
struct Receiver {
    child: Child,
    log: std::path::PathBuf,
}

fn receiver(env: &BTreeMap<String, String>, c: &Cluster, sets: &[&str]) -> Receiver {
    receiver_in(&with_conninfo(env, c), &c.root, sets)
}

/// A receiver with the connection `env` gives, logging into `root`.
fn receiver_in(env: &BTreeMap<String, String>, root: &std::path::Path, sets: &[&str]) -> Receiver {
    let mut cmd = walvault_child(env);
    cmd.arg("wal-receive");
    for s in sets {
        cmd.args(["--set", s]);
    }
    let n = std::fs::read_dir(root).unwrap().count();
    let log = root.join(format!("receiver-{n}.log"));
    let child = cmd
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    Receiver { child, log }
}

/// Until the server counts the receiver as its synchronous standby.
fn wait_sync(c: &Cluster) {
    wait_for(
        "the receiver as a synchronous standby",
        Duration::from_secs(30),
        || {
            c.psql("select sync_state from pg_stat_replication where application_name = 'walvault'")
                == "sync"
        },
    );
}

/// `env` with the connection to `c` that status and the receiver use.
fn with_conninfo(env: &BTreeMap<String, String>, c: &Cluster) -> BTreeMap<String, String> {
    let mut env = env.clone();
    env.insert(
        "WALVAULT_POSTGRES_CONNINFO".into(),
        format!("host={} port={} user=postgres", c.sockdir.display(), c.port),
    );
    env
}

/// `status --json`'s report on the receiver.
fn receiver_status(
    env: &BTreeMap<String, String>,
    c: &Cluster,
    root: &std::path::Path,
) -> serde_json::Value {
    let out = walvault(&["status", "--json"], &with_conninfo(env, c), Some(root));
    let st: serde_json::Value = serde_json::from_str(&ok(&out, "status --json")).unwrap();
    assert!(st["receiver_error"].is_null(), "{st}");
    st["receiver"].clone()
}

fn lsn(c: &Cluster, sql: &str) -> Lsn {
    Lsn::parse(&c.psql(sql)).unwrap()
}

#[test]
fn streams_beside_the_archiver_and_survives_a_kill() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut c = Cluster::init(root.path(), "p");
    c.archive_to_walvault();
    c.start(&env);
    c.psql("create table t (i int)");
    let repo = Repo::at(root.path());

    let mut r = receiver(&env, &c, &[]);
    wait_for("the receiver's slot", Duration::from_secs(30), || {
        c.psql("select count(*) from pg_replication_slots where slot_name = 'walvault' and active")
            == "1"
    });

    // Asynchronous: each commit is in the repository within about flush_seconds.
    let mut lags = Vec::new();
    for i in 0..5 {
        c.psql(&format!("insert into t values ({i})"));
        let commit = lsn(&c, "select pg_current_wal_flush_lsn()");
        let t = Instant::now();
        wait_for(
            "the commit in the repository",
            Duration::from_secs(10),
            || repo.held() >= commit,
        );
        lags.push(t.elapsed());
    }
    lags.sort();
    assert!(
        lags[lags.len() / 2] < Duration::from_millis(2500),
        "median lag {:?} with flush_seconds = 1",
        lags[lags.len() / 2]
    );
    eprintln!("asynchronous lag from commit to repository: {lags:?}");

    // What is stored is the server's own bytes.
    let at = lsn(&c, "select pg_current_wal_flush_lsn()");
    let (pieces, bytes) = repo
        .streamed(at)
        .expect("stream objects of the open segment");
    let name = c.psql(&format!("select pg_walfile_name('{at}')"));
    let file = std::fs::read(c.pgdata.join("pg_wal").join(&name)).unwrap();
    assert!(
        bytes[..] == file[..bytes.len()],
        "the {pieces} stream objects of {name} differ from the server's"
    );

    // A completed segment: the archiver and the receiver store the same object;
    // the stream objects of that segment go.
    c.psql("select pg_switch_wal()");
    c.wait_archived(&name, Duration::from_secs(30));
    wait_for(
        "the stream objects of the full segment to go",
        Duration::from_secs(30),
        || repo.streamed(at).is_none(),
    );
    let full = std::fs::read(c.pgdata.join("pg_wal").join(&name)).unwrap();
    assert!(fetched(&env, root.path(), &name) == full);
    let log = stop_receiver(&mut r, libc::SIGKILL);
    assert!(!log.contains("DIFFERENT"), "{log}");

    // Killed: what comes meanwhile waits in the slot, and status says so.
    c.psql("insert into t select g from generate_series(1, 50000) g");
    let commit = lsn(&c, "select pg_current_wal_flush_lsn()");
    let down = receiver_status(&env, &c, root.path());
    assert_eq!(down["active"], false, "{down}");
    let behind = commit.0 - repo.held().0;
    assert!(
        down["lag_bytes"].as_i64().unwrap() as u64 >= behind && behind > 1 << 20,
        "{down}: the repository is {behind} bytes behind"
    );
    assert!(down["retained_bytes"].as_i64() >= down["lag_bytes"].as_i64());
    assert!(down["lag_seconds"].is_null(), "{down}");
    let prom = root.path().join("status.prom");
    let penv = with_conninfo(&env, &c);
    ok(
        &walvault(
            &["status", "--prometheus", prom.to_str().unwrap()],
            &penv,
            None,
        ),
        "status --prometheus",
    );
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("walvault_receive_slot_active{") && l.ends_with(" 0")),
        "{text}"
    );
    // A new receiver catches up, and status shows it connected and level.
    let mut r = receiver(&env, &c, &[]);
    wait_for("the catch-up", Duration::from_secs(30), || {
        repo.held() >= commit
    });
    wait_for("status: caught up", Duration::from_secs(30), || {
        let up = receiver_status(&env, &c, root.path());
        up["active"] == true
            && up["state"] == "streaming"
            && up["lag_bytes"] == 0
            && up["lag_seconds"] == 0.0
    });
    stop_receiver(&mut r, libc::SIGTERM);

    // Stopped, it stores what it holds first: here a commit that no flush
    // (an hour, or a size) would have stored yet.
    let mut r = receiver(
        &env,
        &c,
        &["receive.flush_seconds=3600", "receive.flush_bytes=0"],
    );
    wait_for("the receiver streaming", Duration::from_secs(30), || {
        read_log(&r).contains("wal-receive: streaming")
    });
    c.psql("insert into t values (-2)");
    let commit = lsn(&c, "select pg_current_wal_flush_lsn()");
    wait_for("the commit sent", Duration::from_secs(30), || {
        Lsn::parse(
            &c.psql("select sent_lsn from pg_stat_replication where application_name = 'walvault'"),
        )
        .is_ok_and(|l| l >= commit)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        repo.held() < commit,
        "flushed before an hour or a size said so"
    );
    let log = stop_receiver(&mut r, libc::SIGTERM);
    assert!(log.contains("stopping"), "{log}");
    assert!(
        repo.held() >= commit,
        "SIGTERM lost what was received: {log}"
    );
    c.stop();
}

#[test]
fn synchronous_commits_wait_for_the_repository() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut c = Cluster::init(root.path(), "p");
    c.conf("synchronous_standby_names = 'walvault'");
    c.start(&env);
    let repo = Repo::at(root.path());
    // Before the receiver runs nothing could commit: create the slot first.
    let mut r = receiver(&env, &c, &["receive.flush_seconds=0"]);
    wait_sync(&c);
    // Idle, a synchronous receiver waits for the server: it does not spin.
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        // utime and stime, fields 14 and 15 of proc(5), in clock ticks.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu(r.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let ticks = cpu(r.child.id()) - before;
    // Before its timer was mended it used 14 ticks (0.14 s) and sent a
    // status report at every wake; now none.
    assert!(
        ticks < 5,
        "an idle receiver used {ticks} clock ticks of CPU in 3 s"
    );
    c.psql("create table t (i int)");
    let first = lsn(&c, "select pg_current_wal_flush_lsn()");
    let commits = 100;
    for i in 0..commits {
        c.psql(&format!("insert into t values ({i})"));
        // The commit returned: its WAL is in the repository already.
        let commit = lsn(&c, "select pg_current_wal_flush_lsn()");
        assert!(
            repo.held() >= commit,
            "commit {i} at {commit} returned before the repository held it ({})",
            repo.held()
        );
    }
    // Each flush stored what it added; pieces were merged meanwhile, and the
    // chain readers follow is the server's bytes.
    let at = lsn(&c, "select pg_current_wal_flush_lsn()");
    assert_eq!(
        at.0 / SEG,
        first.0 / SEG,
        "the commits stayed in one segment"
    );
    let name = c.psql(&format!("select pg_walfile_name('{at}')"));
    let objects = repo
        .rt
        .block_on(repo.store.list(&format!("stream/{name}.")))
        .unwrap();
    let (chained, bytes) = repo.streamed(at).expect("stream objects");
    let file = std::fs::read(c.pgdata.join("pg_wal").join(&name)).unwrap();
    assert!(bytes.len() as u64 >= at.0 % SEG);
    assert!(
        bytes[..] == file[..bytes.len()],
        "the chain differs from {name}"
    );
    assert!(
        objects.len() < commits && chained < commits,
        "{} stream objects, a chain of {chained}, after {commits} synchronous commits: no compaction",
        objects.len()
    );
    eprintln!(
        "{commits} synchronous commits: {} stream objects, a chain of {chained}",
        objects.len()
    );
    // The control: with the receiver frozen, a commit does not return.
    let pid = r.child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::scope(|s| {
        let commit = s.spawn(|| c.psql("insert into t values (-1)"));
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !commit.is_finished(),
            "a commit returned while the receiver was frozen"
        );
        unsafe { libc::kill(pid, libc::SIGCONT) };
        commit.join().unwrap();
    });
    assert!(repo.held() >= lsn(&c, "select pg_current_wal_flush_lsn()"));
    stop_receiver(&mut r, libc::SIGTERM);
    c.stop();
}

/// The primary lost (its postmaster and every child SIGKILLed) under
/// synchronous streaming: recovery to the latest point, from the last backup and
/// the repository alone, holds every commit that returned. The last of them
/// are in a segment never archived whole: wal-fetch serves what wal-receive
/// stored of it.
#[test]
fn sigkill_of_the_primary_loses_no_acknowledged_commit() {
    let s = source(fs_repo);
    let repo = Repo::at(s.root.path());
    s.a.psql("create table t (i int)");
    let _id = s.backup();
    let mut r = receiver(&s.env, &s.a, &["receive.flush_seconds=0"]);
    s.a.psql("alter system set synchronous_standby_names = 'walvault'");
    s.a.psql("select pg_reload_conf()");
    wait_sync(&s.a);
    let mut acked = 0;
    for i in 0..100 {
        s.a.psql(&format!("insert into t values ({i})"));
        acked += 1;
    }
    let last = lsn(&s.a, "select pg_current_wal_flush_lsn()");
    let open = s.a.psql(&format!("select pg_walfile_name('{last}')"));

    // The machine goes: the postmaster and all its processes at once.
    let pm = s.a.pid().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children")).unwrap();
    unsafe { libc::kill(pm, libc::SIGKILL) };
    for c in children.split_whitespace() {
        unsafe { libc::kill(c.parse().unwrap(), libc::SIGKILL) };
    }
    stop_receiver(&mut r, libc::SIGTERM);
    assert!(
        repo.rt
            .block_on(repo.store.head(&format!("wal/{open}")))
            .unwrap()
            .is_none(),
        "{open} was archived whole: the test would not reach the stream objects"
    );
    assert!(repo.streamed(last).is_some(), "no stream object of {open}");

    let b = s.recover("b", &["--target", "latest"]);
    assert_eq!(
        b.psql("select count(*) from t"),
        acked.to_string(),
        "every commit that returned is recovered"
    );
    let log = std::fs::read_to_string(b.log_path()).unwrap();
    assert!(
        log.contains(&format!("{open} is not archived whole: restored the")),
        "{open} was not served from the stream objects:\n{log}"
    );
}

/// S3 down for 30 s while the server keeps committing: nothing is reported
/// flushed that the repository does not hold, the slot keeps the WAL, and the
/// receiver catches up on its own once S3 is back.
#[test]
fn s3_down_for_30_s_loses_nothing() {
    let mut weed = Seaweed::start();
    let root = pg_tempdir();
    let env = weed.walvault_env("rx");
    let mut c = Cluster::init(root.path(), "p");
    c.start(&env);
    c.psql("create table t (i int)");
    let mut r = receiver(&env, &c, &[]);
    wait_for("the receiver streaming", Duration::from_secs(30), || {
        read_log(&r).contains("wal-receive: streaming")
    });
    // What the receiver told the server is stored: a physical slot's
    // restart_lsn is the flush position last reported (and it stays while
    // the receiver is disconnected).
    let reported = |c: &Cluster| {
        Lsn::parse(
            &c.psql("select restart_lsn from pg_replication_slots where slot_name = 'walvault'"),
        )
        .unwrap()
    };
    // What the bucket holds.
    let held = |weed: &Seaweed| {
        held_by(
            1,
            weed.list("rx/")
                .iter()
                .map(|k| k.trim_start_matches("rx/").to_string()),
        )
    };
    c.psql("insert into t values (0)");
    let first = lsn(&c, "select pg_current_wal_flush_lsn()");
    wait_for("the first commit stored", Duration::from_secs(30), || {
        reported(&c) >= first
    });

    weed.stop();
    let down = Instant::now();
    let mut i = 1;
    let mut at_outage = None;
    while down.elapsed() < Duration::from_secs(30) {
        c.psql(&format!("insert into t values ({i})"));
        i += 1;
        if at_outage.is_none() && down.elapsed() > Duration::from_secs(3) {
            at_outage = Some(reported(&c));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = lsn(&c, "select pg_current_wal_flush_lsn()");
    let at_outage = at_outage.unwrap();
    assert_eq!(
        reported(&c),
        at_outage,
        "a flush was reported while S3 was down"
    );
    // The server keeps every segment from there.
    let kept = c.psql(&format!("select pg_walfile_name('{at_outage}')"));
    assert!(c.pgdata.join("pg_wal").join(&kept).exists(), "{kept} gone");

    weed.restart();
    wait_for("the receiver to catch up", Duration::from_secs(60), || {
        reported(&c) >= last
    });
    assert!(
        held(&weed) >= last,
        "reported {} but the bucket holds {}",
        reported(&c),
        held(&weed)
    );
    let log = stop_receiver(&mut r, libc::SIGTERM);
    assert!(log.contains("reconnecting"), "{log}");
    c.stop();
    weed.stop();
}

#[test]
fn refusals_are_one_line() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let mut c = Cluster::init(root.path(), "p");
    c.start(&env);
    // A slot that does not exist, and walvault told not to create it.
    let mut r = receiver(&env, &c, &["receive.create_slot=false"]);
    let out = wait_exit(&mut r);
    assert!(
        out.contains("replication slot \"walvault\" does not exist"),
        "{out}"
    );
    assert_eq!(out.trim().lines().count(), 1, "{out}");

    // The repository of another cluster.
    let mut other = Cluster::init(root.path(), "o");
    other.start(&env);
    other.psql("create table x as select 1");
    let out = walvault(
        &["repo-init", "--pgdata", other.pgdata.to_str().unwrap()],
        &env,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut r = receiver(&env, &c, &[]);
    let out = wait_exit(&mut r);
    assert!(out.contains("system identifier"), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    other.stop();
    c.stop();
}

/// Waits for a receiver that must give up; its stderr.
fn wait_exit(r: &mut Receiver) -> String {
    let t = Instant::now();
    loop {
        if let Some(status) = r.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(1), "{}", read_log(r));
            return read_log(r);
        }
        if t.elapsed() > Duration::from_secs(30) {
            stop_pid(r.child.id() as i32, libc::SIGKILL, Duration::from_secs(5));
            panic!("the receiver did not give up: {}", read_log(r));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_receiver(r: &mut Receiver, sig: i32) -> String {
    stop_pid(r.child.id() as i32, sig, Duration::from_secs(20));
    let status = r.child.wait().unwrap();
    if sig == libc::SIGTERM {
        assert!(status.success(), "{status:?}: {}", read_log(r));
    }
    read_log(r)
}

fn read_log(r: &Receiver) -> String {
    std::fs::read_to_string(&r.log).unwrap_or_default()
}

/// On every major 13 to 18: the receiver stores each commit, status reads its
/// slot and walsender (the columns it reads differ in no major), and a
/// SIGKILLed receiver restarted catches up with what came meanwhile.
#[test]
fn receives_on_every_major() {
    for major in [13u32, 14, 15, 16, 17, 18] {
        let root = pg_tempdir();
        let env = fs_repo(root.path());
        let mut c = Cluster::init_major(root.path(), "p", major);
        c.start(&env);
        let repo = Repo::at(root.path());
        let mut r = receiver(&env, &c, &[]);
        c.psql("create table t (i int)");
        let mut commit = lsn(&c, "select pg_current_wal_flush_lsn()");
        for round in 0..2 {
            wait_for(
                &format!("PostgreSQL {major}: the commit in the repository"),
                Duration::from_secs(30),
                || repo.held() >= commit,
            );
            wait_for(
                &format!("PostgreSQL {major}: status sees the receiver level"),
                Duration::from_secs(30),
                || {
                    let st = receiver_status(&env, &c, root.path());
                    st["active"] == true && st["lag_bytes"] == 0
                },
            );
            if round == 0 {
                let log = stop_receiver(&mut r, libc::SIGKILL);
                assert!(!log.contains("ERROR"), "PostgreSQL {major}: {log}");
                c.psql("insert into t select g from generate_series(1, 20000) g");
                commit = lsn(&c, "select pg_current_wal_flush_lsn()");
                let down = receiver_status(&env, &c, root.path());
                assert_eq!(down["active"], false, "PostgreSQL {major}: {down}");
                assert!(
                    down["lag_bytes"].as_i64().unwrap() as u64 >= commit.0 - repo.held().0,
                    "PostgreSQL {major}: {down}"
                );
                r = receiver(&env, &c, &[]);
            }
        }
        stop_receiver(&mut r, libc::SIGTERM);
        // Every row, from the stream objects of the open segment.
        let name = c.psql(&format!("select pg_walfile_name('{commit}')"));
        let file = std::fs::read(c.pgdata.join("pg_wal").join(&name)).unwrap();
        let held = match repo.streamed(commit) {
            Some((_, bytes)) => {
                // wal-verify reports the open segment from the names alone.
                let out = walvault(&["wal-verify", "--json"], &env, Some(root.path()));
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
                let st = v["streamed"]
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s["segment"] == name.as_str()))
                    .unwrap_or_else(|| panic!("PostgreSQL {major}: {name} not in {v}"));
                let end = Lsn::parse(st["end_lsn"].as_str().unwrap()).unwrap();
                assert!(
                    end >= commit && st["bytes"] == bytes.len() && st["after_gap"] == false,
                    "PostgreSQL {major}: {st} for a commit at {commit}"
                );
                bytes
            }
            // The segment completed meanwhile: stored whole.
            None => fetched(&env, root.path(), &name),
        };
        assert!(
            held[..] == file[..held.len()] && (held.len() as u64) >= commit.0 % SEG,
            "PostgreSQL {major}: the repository's {name} is not the server's bytes"
        );
        c.stop();
    }
}

/// A primary and its streaming standby, with a local repository.
struct Pair {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
    p: Cluster,
    s: Cluster,
    repo: Repo,
}

impl Pair {
    fn new() -> Pair {
        let root = pg_tempdir();
        let env = fs_repo(root.path());
        let mut p = Cluster::init(root.path(), "p");
        p.start(&env);
        let mut s = p.streaming_standby(root.path(), "s");
        s.start(&env);
        let repo = Repo::at(root.path());
        Pair {
            root,
            env,
            p,
            s,
            repo,
        }
    }
}

/// Promotes the standby `s` and waits until it is a primary.
fn promote(s: &Cluster) {
    s.psql("select pg_promote()");
    wait_for("the promotion", Duration::from_secs(30), || {
        s.psql("select pg_is_in_recovery()") == "f"
    });
}

/// From a standby (cascading) through its promotion: the receiver streams
/// timeline 1 from the standby, follows it onto timeline 2 with its history
/// file, and the new timeline's open segment is in the repository as the
/// promoted server writes it.
#[test]
fn follows_a_standby_through_its_promotion() {
    let Pair {
        root,
        env,
        mut p,
        mut s,
        repo,
    } = Pair::new();
    let mut r = receiver(&env, &s, &[]);
    wait_for(
        "the receiver on the standby",
        Duration::from_secs(30),
        || {
            s.psql(
                "select count(*) from pg_replication_slots where slot_name = 'walvault' and active",
            ) == "1"
        },
    );
    p.psql("create table t as select g from generate_series(1, 1000) g");
    let written = lsn(&p, "select pg_current_wal_flush_lsn()");
    wait_for(
        "timeline 1 through the standby",
        Duration::from_secs(30),
        || repo.held() >= written,
    );
    let up = receiver_status(&env, &s, root.path());
    assert_eq!(up["active"], true, "status on a standby: {up}");

    p.stop();
    promote(&s);
    s.psql("insert into t select g from generate_series(1001, 2000) g");
    let commit = lsn(&s, "select pg_current_wal_flush_lsn()");
    let name = s.psql(&format!("select pg_walfile_name('{commit}')"));
    assert!(name.starts_with("00000002"), "{name}");
    wait_for(
        "timeline 2 in the repository",
        Duration::from_secs(60),
        || {
            repo.rt.block_on(async {
                let seg = walvault::wal::names::SegmentName::from_segno(2, commit.0 / SEG, SEG);
                let pieces = stream::list(&repo.store, &seg).await.unwrap();
                stream::reach(pieces.iter().cloned())
                    .get(&seg)
                    .is_some_and(|&reach| reach >= commit.0 % SEG)
            })
        },
    );
    assert!(
        fetched(&env, root.path(), "00000002.history")
            == std::fs::read(s.pgdata.join("pg_wal/00000002.history")).unwrap(),
        "the history file stored as the server's"
    );
    let log = stop_receiver(&mut r, libc::SIGTERM);
    assert!(log.contains("timeline 1 ended"), "{log}");
    s.stop();
}

/// A failover with the receiver running, given both servers and
/// `target_session_attrs=read-write`: it streams from the primary (never
/// from the standby while that is one), and once the primary is gone and the
/// standby promoted, finds the new primary by itself (creating its slot
/// there) and goes on with timeline 2, nothing missing in between.
#[test]
fn follows_the_new_primary_by_itself() {
    let Pair {
        root,
        env,
        mut p,
        mut s,
        repo,
    } = Pair::new();
    let mut both = env.clone();
    both.insert(
        "WALVAULT_POSTGRES_CONNINFO".into(),
        format!(
            "host={},{} port={},{} user=postgres target_session_attrs=read-write",
            s.sockdir.display(),
            p.sockdir.display(),
            s.port,
            p.port
        ),
    );
    // The standby listed first: passed over while it is one.
    let mut r = receiver_in(&both, root.path(), &[]);
    p.psql("create table t as select g from generate_series(1, 1000) g");
    let first = lsn(&p, "select pg_current_wal_flush_lsn()");
    wait_for(
        "timeline 1 from the primary",
        Duration::from_secs(30),
        || repo.held() >= first,
    );
    wait_for("the standby replayed it", Duration::from_secs(30), || {
        lsn(&s, "select pg_last_wal_replay_lsn()") >= first
    });
    p.stop();
    promote(&s);
    s.psql("insert into t select g from generate_series(1001, 2000) g");
    let commit = lsn(&s, "select pg_current_wal_flush_lsn()");
    wait_for(
        "timeline 2 from the new primary",
        Duration::from_secs(60),
        || repo.held_on(2) >= commit,
    );
    let log = stop_receiver(&mut r, libc::SIGTERM);
    let streaming: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("streaming timeline"))
        .collect();
    let (p_at, s_at) = (
        format!("{}/.s.PGSQL.{}", p.sockdir.display(), p.port),
        format!("{}/.s.PGSQL.{}", s.sockdir.display(), s.port),
    );
    assert!(streaming[0].contains(&p_at), "{log}");
    assert!(
        log.contains("read-only (a standby)"),
        "the standby passed over: {log}"
    );
    assert!(
        streaming.last().unwrap().contains("streaming timeline 2")
            && streaming.last().unwrap().contains(&s_at),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    // Timeline 1 up to the switch point (streamed from either server), then
    // timeline 2: no gap between them.
    let history = std::fs::read_to_string(s.pgdata.join("pg_wal/00000002.history")).unwrap();
    let switch = Lsn::parse(history.split_whitespace().nth(1).unwrap()).unwrap();
    assert!(
        repo.held_on(1) >= switch,
        "timeline 1 held to {}, switch at {switch}",
        repo.held_on(1)
    );
    s.stop();
}

/// A promotion while the receiver is down: started again on the promoted
/// server (timeline 2), it first streams the rest of timeline 1 (a segment
/// completed meanwhile, and the open one up to the switch point), which the
/// server keeps for its slot, then timeline 2. The repository holds the
/// server's bytes throughout: nothing written while it was down is missing.
#[test]
fn a_promotion_while_the_receiver_is_down_loses_nothing() {
    promotion_while_down(true);
}

/// The same with the slot dropped meanwhile and the server's copy of
/// timeline 1 recycled: one error naming what is gone, then timeline 2.
#[test]
fn a_promotion_while_the_receiver_is_down_and_its_slot_gone_goes_on() {
    promotion_while_down(false);
}

fn promotion_while_down(slot_kept: bool) {
    let Pair {
        root,
        env,
        mut p,
        mut s,
        repo,
    } = Pair::new();
    let mut r = receiver(&env, &s, &[]);
    p.psql("create table t as select g from generate_series(1, 1000) g");
    let first = lsn(&p, "select pg_current_wal_flush_lsn()");
    wait_for(
        "timeline 1 through the standby",
        Duration::from_secs(30),
        || repo.held() >= first,
    );
    stop_receiver(&mut r, libc::SIGTERM);

    // While it is down: a segment completed, and more in the next one.
    p.psql("insert into t select g from generate_series(1001, 2000) g");
    let missed = p.psql("select pg_walfile_name(pg_current_wal_lsn())");
    p.psql("select pg_switch_wal()");
    p.psql("insert into t select g from generate_series(2001, 3000) g");
    let last = lsn(&p, "select pg_current_wal_flush_lsn()");
    wait_for("the standby replayed it", Duration::from_secs(30), || {
        lsn(&s, "select pg_last_wal_replay_lsn()") >= last
    });
    p.stop();
    promote(&s);
    let history = std::fs::read_to_string(s.pgdata.join("pg_wal/00000002.history")).unwrap();
    let switch = Lsn::parse(history.split_whitespace().nth(1).unwrap()).unwrap();
    assert!(switch >= last, "{history}");
    s.psql("insert into t select g from generate_series(3001, 4000) g");
    if !slot_kept {
        s.psql("select pg_drop_replication_slot('walvault')");
        wait_for("timeline 1 recycled", Duration::from_secs(30), || {
            s.psql("select pg_switch_wal()");
            s.psql("checkpoint");
            !s.pgdata.join("pg_wal").join(&missed).exists()
        });
    }
    let commit = lsn(&s, "select pg_current_wal_flush_lsn()");

    let mut r = receiver(&env, &s, &[]);
    wait_for(
        "timeline 2 in the repository",
        Duration::from_secs(60),
        || repo.held_on(2) >= commit,
    );
    let log = stop_receiver(&mut r, libc::SIGTERM);
    assert!(
        log.contains("streaming timeline 1 from") && log.contains("was down when timeline 1 ended"),
        "{log}"
    );
    if !slot_kept {
        // Timeline 1's rest named once; timeline 2's start too when the
        // same checkpoint recycled it (it usually does).
        assert_eq!(
            log.matches("the rest of timeline 1 from").count(),
            1,
            "one error for what is gone: {log}"
        );
        assert!(log.matches("timeline 2's WAL from").count() <= 1, "{log}");
        s.stop();
        return;
    }
    assert!(!log.contains("ERROR"), "{log}");
    // The segment completed while it was down, whole, as the server wrote it.
    assert!(
        fetched(&env, root.path(), &missed)
            == std::fs::read(s.pgdata.join("pg_wal").join(&missed)).unwrap(),
        "{missed} is not the server's"
    );
    // Timeline 1's last segment up to the switch point: the server's bytes
    // (its timeline 2 file holds the same up to there).
    let (_, held) = repo
        .streamed_on(1, switch)
        .expect("timeline 1's last segment");
    let switch_file = s.psql(&format!("select pg_walfile_name('{switch}')"));
    let on_server = std::fs::read(s.pgdata.join("pg_wal").join(&switch_file)).unwrap();
    let upto = (switch.0 % SEG) as usize;
    assert!(
        held.len() >= upto && held[..upto] == on_server[..upto],
        "timeline 1 held to {} of the switch at {switch}",
        held.len()
    );
    s.stop();
}

/// Asynchronous mode (flush_seconds 1): the primary SIGKILLed while commits
/// come one after another; `recover --target latest` holds every commit that
/// returned more than flush_seconds (plus a second of margin for the upload)
/// before the kill, and the rows recovered are a prefix of those committed.
#[test]
fn sigkill_of_the_primary_in_asynchronous_mode_loses_at_most_flush_seconds() {
    let s = source(fs_repo);
    s.a.psql("create table t (i int)");
    let _id = s.backup();
    let mut r = receiver(&s.env, &s.a, &[]);
    wait_for("the receiver streaming", Duration::from_secs(30), || {
        s.a.psql("select count(*) from pg_stat_replication where application_name = 'walvault'")
            == "1"
    });
    let mut acked = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let i = acked.len();
        s.a.psql(&format!("insert into t values ({i})"));
        acked.push(Instant::now());
    }
    let pm = s.a.pid().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pm}/task/{pm}/children")).unwrap();
    unsafe { libc::kill(pm, libc::SIGKILL) };
    let killed = Instant::now();
    for c in children.split_whitespace() {
        unsafe { libc::kill(c.parse().unwrap(), libc::SIGKILL) };
    }
    stop_receiver(&mut r, libc::SIGTERM);

    let b = s.recover("b", &["--target", "latest"]);
    let got = b.psql("select count(*) || ' ' || coalesce(max(i), -1) from t");
    let (count, max) = got.split_once(' ').unwrap();
    let (count, max): (usize, i64) = (count.parse().unwrap(), max.parse().unwrap());
    assert_eq!(max + 1, count as i64, "the rows recovered are a prefix");
    let lost = acked.len() - count;
    let window = acked
        .get(count)
        .map_or(Duration::ZERO, |t| killed.duration_since(*t));
    eprintln!(
        "asynchronous: {lost} of {} acknowledged commits lost, the oldest of them {window:?} before the kill",
        acked.len()
    );
    assert!(
        window <= Duration::from_secs(2),
        "a commit acknowledged {window:?} before the kill was lost ({lost} of {})",
        acked.len()
    );
}
