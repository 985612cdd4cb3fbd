//! Real Patroni (Debian's package, 3.x) with a real etcd, three members on
//! loopback, configured from examples/patroni/patroni.yml as shipped (only
//! paths, names and ports replaced, and the test's short DCS timings added):
//! walvault archives on every member, is the restore_command and the first
//! replica-creation method. A cluster's life: bootstrap, backup, members made
//! from the archive, switchover, a killed leader and failover, the old leader
//! back by pg_rewind, reinit with --delta, a backup on a replica, wal-verify
//! across timelines 1→2→3, and PITR to a time after the failover.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATRONI: &str = "/usr/bin/patroni";
const PATRONICTL: &str = "/usr/bin/patronictl";
const ETCD: &str = "/usr/bin/etcd";

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A process started by this test, run as postgres, output into `log`.
fn spawn_pg_user(
    program: &str,
    args: &[&str],
    env: &BTreeMap<String, String>,
    log: &Path,
) -> Child {
    let out = std::fs::File::create(log).unwrap();
    chown_pg(log);
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .envs(env)
        .env("HOME", "/var/lib/postgresql")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    if is_root() {
        let (uid, gid) = postgres_ids();
        c.uid(uid).gid(gid);
    }
    c.spawn().unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// The HTTP status of GET `path` on 127.0.0.1:`port` (0 when it does not answer).
fn http_status(port: u16, path: &str) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(2),
    ) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return 0;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

struct Member {
    name: String,
    cfg: PathBuf,
    rest: u16,
    pg: Cluster,
    log: PathBuf,
    /// PostgreSQL's own log directory (logging_collector on, as Patroni sets).
    pglog: PathBuf,
    patroni: Option<Child>,
}

impl Member {
    fn is_primary(&self) -> bool {
        http_status(self.rest, "/primary") == 200
    }
    fn is_replica(&self) -> bool {
        http_status(self.rest, "/replica") == 200
    }
    fn patroni_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn postmaster(&self) -> Option<i32> {
        let t = std::fs::read_to_string(self.pg.pgdata.join("postmaster.pid")).ok()?;
        t.lines()
            .next()?
            .trim()
            .parse()
            .ok()
            .filter(|p| process_alive(*p))
    }
}

struct Patroni {
    root: tempfile::TempDir,
    env: BTreeMap<String, String>,
    scope: String,
    etcd: Option<Child>,
    members: Vec<Member>,
}

impl Drop for Patroni {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.members {
                // Patroni's decisions, not its once-a-second heartbeat.
                let log = m.patroni_log();
                let decisions: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("INFO: no action."))
                    .collect();
                let from = decisions.len().saturating_sub(80);
                eprintln!(
                    "--- Patroni {} ---\n{}",
                    m.name,
                    decisions[from..].join("\n")
                );
                for f in std::fs::read_dir(&m.pglog).into_iter().flatten().flatten() {
                    eprintln!(
                        "--- PostgreSQL {} {} ---\n{}",
                        m.name,
                        f.path().display(),
                        tail(&f.path(), 30)
                    );
                }
            }
        }
        for m in &mut self.members {
            if let Some(c) = m.patroni.take() {
                stop_pid(c.id() as i32, libc::SIGTERM, Duration::from_secs(20));
            }
            if let Some(pid) = m.postmaster() {
                stop_pid(pid, libc::SIGQUIT, Duration::from_secs(10));
            }
        }
        if let Some(c) = self.etcd.take() {
            stop_pid(c.id() as i32, libc::SIGTERM, Duration::from_secs(10));
        }
    }
}

impl Patroni {
    fn new() -> Patroni {
        for p in [PATRONI, PATRONICTL, ETCD] {
            require(p, "Patroni and etcd (Debian's patroni and etcd-server)");
        }
        let root = pg_tempdir();
        let env = fs_repo(root.path());
        let (client, peer) = (free_port(), free_port());
        let data = root.path().join("etcd");
        let etcd_env: BTreeMap<String, String> =
            [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let etcd = spawn_pg_user(
            ETCD,
            &[
                "--name",
                "wv",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &url(client),
                "--advertise-client-urls",
                &url(client),
                "--listen-peer-urls",
                &url(peer),
                "--initial-advertise-peer-urls",
                &url(peer),
                "--initial-cluster",
                &format!("wv={}", url(peer)),
            ],
            &etcd_env,
            &root.path().join("etcd.log"),
        );
        wait_for("etcd", Duration::from_secs(30), || {
            http_status(client, "/health") == 200
        });
        let mut p = Patroni {
            scope: format!("wv{}", std::process::id()),
            env,
            etcd: Some(etcd),
            members: Vec::new(),
            root,
        };
        for n in 1..=3 {
            let m = p.member(&format!("m{n}"), client);
            p.members.push(m);
        }
        p
    }

    /// A member's configuration: examples/patroni/patroni.yml with this
    /// member's paths, names and ports, the test's DCS timings, the logging
    /// collector on and an absolute log_directory (as many Patroni sites have).
    fn member(&self, name: &str, etcd_port: u16) -> Member {
        let root = self.root.path();
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/patroni/patroni.yml"
        ))
        .unwrap();
        let script = root.join("walvault-patroni-replica");
        if !script.exists() {
            std::fs::copy(
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/examples/patroni/walvault-patroni-replica"
                ),
                &script,
            )
            .unwrap();
        }
        let mut pg = Cluster::at(root, name);
        let rest = free_port();
        let pglog = root.join(format!("{name}-pglog"));
        for d in [&pg.sockdir, &pglog] {
            std::fs::create_dir_all(d).unwrap();
            chown_pg(d);
        }
        pg.env = self.env.clone();
        let mut y = example
            .replace("scope: prod-main", &format!("scope: {}", self.scope))
            .replace("name: db2", &format!("name: {name}"))
            .replace(
                "/usr/local/bin/walvault-env",
                wrapper_bin().to_str().unwrap(),
            )
            .replace(
                "/usr/local/bin/walvault-patroni-replica",
                script.to_str().unwrap(),
            )
            .replace("/var/lib/postgresql/15/main", pg.pgdata.to_str().unwrap())
            .replace("/usr/lib/postgresql/15/bin", PG_BIN);
        for (anchor, add) in [
            (
                "bootstrap:\n  dcs:\n",
                "    ttl: 12\n    loop_wait: 1\n    retry_timeout: 5\n".to_string(),
            ),
            (
                "      parameters:\n",
                "        logging_collector: 'on'\n        track_commit_timestamp: 'on'\n        fsync: 'off'\n        max_wal_senders: 10\n".to_string(),
            ),
            (
                "\npostgresql:\n",
                format!(
                    "  listen: 127.0.0.1:{port}\n  connect_address: 127.0.0.1:{port}\n  pgpass: {root}/{name}.pgpass\n  authentication:\n    superuser: {{username: postgres}}\n    replication: {{username: postgres}}\n    rewind: {{username: postgres}}\n  parameters:\n    unix_socket_directories: {sock}\n    log_directory: {pglog}\n",
                    port = pg.port,
                    root = root.display(),
                    sock = pg.sockdir.display(),
                    pglog = pglog.display()
                ),
            ),
        ] {
            assert!(y.contains(anchor), "examples/patroni/patroni.yml has no '{anchor}'");
            y = y.replacen(anchor, &format!("{anchor}{add}"), 1);
        }
        y.push_str(&format!(
            "\nrestapi:\n  listen: 127.0.0.1:{rest}\n  connect_address: 127.0.0.1:{rest}\netcd3:\n  hosts: 127.0.0.1:{etcd_port}\nbootstrap:\n  initdb:\n    - encoding: UTF8\n    - locale: C\n"
        ));
        // Two `bootstrap:` keys: YAML keeps the last. Merge by hand instead.
        let y = merge_bootstrap(&y);
        let cfg = root.join(format!("{name}.yml"));
        std::fs::write(&cfg, y).unwrap();
        chown_pg(&cfg);
        Member {
            name: name.into(),
            cfg,
            rest,
            pg,
            log: root.join(format!("{name}-patroni.log")),
            pglog,
            patroni: None,
        }
    }

    fn start(&mut self, i: usize) {
        let mut env = self.env.clone();
        env.insert("WV_CMD".into(), wrapper_bin().display().to_string());
        env.insert(
            "PATH".into(),
            format!("{PG_BIN}:/usr/local/bin:/usr/bin:/bin"),
        );
        let m = &mut self.members[i];
        m.patroni = Some(spawn_pg_user(
            PATRONI,
            &[m.cfg.to_str().unwrap()],
            &env,
            &m.log,
        ));
    }

    fn ctl(&self, args: &[&str]) -> String {
        let mut env = self.env.clone();
        env.insert("PATH".into(), "/usr/bin:/bin".into());
        let out = pg_command(PATRONICTL, &env)
            .arg("-c")
            .arg(&self.members[0].cfg)
            .args(args)
            .output()
            .unwrap();
        ok(&out, &format!("patronictl {args:?}"))
    }

    fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.is_primary())
    }

    fn wait_leader(&self, not: Option<usize>, within: Duration) -> usize {
        let mut found = None;
        // Patroni answers /primary once it holds the lock; writes wait for
        // the promotion to end.
        wait_for("a writable Patroni leader", within, || {
            found = self.leader().filter(|l| Some(*l) != not).filter(|&l| {
                self.members[l]
                    .pg
                    .psql_try("select not pg_is_in_recovery()")
                    .is_ok_and(|s| s == "t")
            });
            found.is_some()
        });
        found.unwrap()
    }

    fn wait_replica(&self, i: usize, within: Duration) {
        wait_for(
            &format!("{} running as a replica", self.members[i].name),
            within,
            || self.members[i].is_replica(),
        );
    }
}

/// Moves the `bootstrap:` section appended at the end into the first one.
fn merge_bootstrap(y: &str) -> String {
    let (head, tail) = y.rsplit_once("\nbootstrap:\n").unwrap();
    head.replacen("bootstrap:\n", &format!("bootstrap:\n{tail}"), 1)
}

/// The walreceiver processes of a member's postmaster.
fn walreceivers(postmaster: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid: i32 = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == postmaster && cmd.contains("walreceiver") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_patroni_clusters_life_with_walvault() {
    let t0 = Instant::now();
    let mut p = Patroni::new();
    let env = p.env.clone();

    // 1. Bootstrap m1; archive; a backup.
    p.start(0);
    assert_eq!(p.wait_leader(None, Duration::from_secs(120)), 0);
    let m1 = &p.members[0].pg;
    m1.psql("create table t (i bigint primary key, note text)");
    insert(m1, 1, 10);
    let out = walvault(&["backup-push", "--fast"], &m1.pg_env(&env), None);
    ok(&out, "backup-push on the leader");

    // 2. Members made by the walvault method (Patroni's log says so).
    p.start(1);
    p.start(2);
    for i in [1, 2] {
        p.wait_replica(i, Duration::from_secs(180));
        let log = p.members[i].patroni_log();
        assert!(
            log.contains("replica has been created using walvault"),
            "{}: {log}",
            p.members[i].name
        );
    }
    insert(&p.members[0].pg, 11, 20);

    // 3. Switchover to m2: timeline 2.
    p.ctl(&[
        "switchover",
        &p.scope,
        "--leader",
        "m1",
        "--candidate",
        "m2",
        "--force",
    ]);
    assert_eq!(p.wait_leader(Some(0), Duration::from_secs(60)), 1);
    insert(&p.members[1].pg, 21, 30);
    for i in [0, 2] {
        p.wait_replica(i, Duration::from_secs(120));
    }
    wait_for(
        "replicas caught up with row 30",
        Duration::from_secs(60),
        || {
            [0, 2].iter().all(|&i| {
                p.members[i]
                    .pg
                    .psql_try("select count(*) from t")
                    .is_ok_and(|c| c == "30")
            })
        },
    );

    // 4. The leader's host lost (its Patroni and its postmaster killed) with
    // commits its replicas never received (their walreceivers stopped, then
    // killed): failover once the leader key expires, timeline 3, and the old
    // leader diverged. Its Patroni is killed too because with Patroni alive
    // (primary_start_timeout 0) how the old leader comes back is a race: twice
    // in CI under load it followed timeline 3 as a replica, for 180 s, with no
    // successful pg_rewind in its log. A host that comes back takes Patroni's
    // start path, the same every time: crash recovery, then pg_rewind.
    let stopped: Vec<i32> = [0, 2]
        .iter()
        .flat_map(|&i| walreceivers(p.members[i].postmaster().unwrap()))
        .collect();
    assert_eq!(stopped.len(), 2, "one walreceiver on each replica");
    for pid in &stopped {
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    insert(&p.members[1].pg, 31, 33);
    let ahead = p.members[1].pg.psql("select pg_current_wal_lsn()");
    for i in [0, 2] {
        let r = &p.members[i].pg;
        assert_eq!(
            r.psql("select count(*) from t"),
            "30",
            "{} received rows its walreceiver was stopped for",
            p.members[i].name
        );
        eprintln!(
            "{}: replayed {} of the leader's {ahead}",
            p.members[i].name,
            r.psql("select pg_last_wal_replay_lsn()")
        );
    }
    let killed = p.members[1].postmaster().unwrap();
    let mut patroni = p.members[1].patroni.take().unwrap();
    let _ = patroni.kill();
    let _ = patroni.wait();
    unsafe { libc::kill(killed, libc::SIGKILL) };
    // Killed, not continued: what the kernel buffered for them never reaches
    // their disks (each replica's postmaster restarts from what it has).
    for pid in &stopped {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let leader = p.wait_leader(Some(1), Duration::from_secs(90));
    let l = &p.members[leader].pg;
    insert(l, 41, 45);
    let target = now_utc(l);
    insert(l, 46, 50);
    // pg_control's timeline waits for the next checkpoint; the current WAL
    // file's name carries the timeline the leader writes on now.
    assert_eq!(
        l.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000003",
        "failover after a switchover: timeline 3"
    );

    // 5. The old leader's host back: by pg_rewind (its log: the rewind, exit
    // code 0, then following the new leader).
    p.start(1);
    let rewound = |log: &str| {
        let Some(at) = log.find("running pg_rewind from") else {
            return false;
        };
        log[at..]
            .split_once("pg_rewind exit code=0")
            .is_some_and(|(_, after)| after.contains("a secondary, and following a leader"))
    };
    wait_for("m2 rewound and following", Duration::from_secs(180), || {
        rewound(&p.members[1].patroni_log()) && p.members[1].is_replica()
    });
    assert_eq!(
        p.members[1]
            .pg
            .psql("select count(*) from t where i between 31 and 33"),
        "0",
        "the rewound member dropped the commits the cluster never had"
    );

    // 6. patronictl reinit of the third member: the walvault method over
    // the kept data directory (--delta).
    let other = [0, 2].into_iter().find(|&i| i != leader).unwrap();
    let name = p.members[other].name.clone();
    let before = p.members[other].patroni_log().len();
    p.ctl(&["reinit", &p.scope, &name, "--force"]);
    wait_for(
        "reinit by the walvault method",
        Duration::from_secs(180),
        || {
            p.members[other].patroni_log()[before..]
                .contains("replica has been created using walvault")
        },
    );
    p.wait_replica(other, Duration::from_secs(180));
    let log = p.members[other].patroni_log();
    assert!(
        log[before..].contains("delta:    over the copy in the target directory"),
        "reinit restored without --delta over the kept directory: {}",
        &log[before..]
    );

    // 7. A backup on a replica.
    let out = walvault(
        &["backup-push", "--fast"],
        &p.members[1].pg.pg_env(&env),
        None,
    );
    let id = ok(&out, "backup-push on a replica").trim().to_string();
    assert_eq!(manifest_json(&env, &id)["taken_on"]["role"], "standby");

    // 8. The archive across timelines 1 → 2 → 3.
    let l = &p.members[leader].pg;
    insert(l, 51, 55);
    let last = l.switch_wal();
    l.wait_archived(&last, Duration::from_secs(120));
    let verify = ok(&walvault(&["wal-verify"], &env, None), "wal-verify");
    for want in [
        "timeline 2 branched from timeline 1 at",
        "timeline 3 branched from timeline 2 at",
    ] {
        assert!(verify.contains(want), "{want}: {verify}");
    }

    // 9. PITR to a time after the failover, into a new directory on this
    // host: exact rows, with the collector on and Patroni's absolute
    // hba_file/ident_file in the backup's configuration.
    let mut c = Cluster::at(p.root.path(), "pitr");
    let mut args = c.recover_args();
    args.extend(["--target-time".into(), target]);
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
        None,
    );
    let text = ok(&out, "recover to a time after the failover");
    assert!(text.contains("checked:  "), "{text}");
    for want in ["hba_file ", "ident_file ", "log_directory "] {
        assert!(text.contains(want), "{want}: {text}");
    }
    c.adopt();
    assert_eq!(summary(&c), expected(&[(1, 30), (41, 45)]));
    c.stop();
    eprintln!("Patroni scenario: {:.0} s", t0.elapsed().as_secs_f64());
}
