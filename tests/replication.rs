//! The physical replication client (wal::replication) against real servers of
//! every major 13 to 18: what it streams is byte for byte the server's own
//! segment file, its status reports are what pg_stat_replication shows, and
//! refusals come back as one line in the server's words.

mod common;

use common::*;
use std::time::Duration;
use walvault::wal::names::Lsn;
use walvault::wal::replication::{Event, Replication};

const SEG: u64 = 16 << 20;

fn session_config(c: &Cluster, user: &str) -> tokio_postgres::Config {
    walvault::pg::conn::resolve(Some(&format!(
        "host={} port={} user={user}",
        c.sockdir.display(),
        c.port
    )))
    .unwrap()
}

#[test]
fn streams_the_servers_own_segment_on_every_major() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for major in [13u32, 14, 15, 16, 17, 18] {
        let root = pg_tempdir();
        let mut c = Cluster::init_major(root.path(), "p", major);
        c.start(&base_env());
        let sysid: u64 = c
            .psql("select system_identifier from pg_control_system()")
            .trim()
            .parse()
            .unwrap();
        rt.block_on(async {
            let mut r = Replication::connect(&session_config(&c, "postgres"))
                .await
                .unwrap();
            let sys = r.identify_system().await.unwrap();
            assert_eq!(sys.system_id, sysid, "PostgreSQL {major}");
            assert_eq!(sys.timeline, 1);

            r.create_slot("walvault_t").await.unwrap();
            let reserved = Lsn::parse(&c.psql(
                "select restart_lsn from pg_replication_slots where slot_name = 'walvault_t'",
            ))
            .unwrap();
            assert!(
                reserved <= sys.position,
                "PostgreSQL {major}: the slot holds WAL from now"
            );

            let (name, got) = stream_one_segment(&mut r, &c, reserved, major).await;
            let file = std::fs::read(c.pgdata.join("pg_wal").join(&name)).unwrap();
            assert!(
                got == file,
                "PostgreSQL {major}: the streamed {name} differs from the server's file"
            );
            let start = Lsn(reserved.0 / SEG * SEG);

            // The flush position reported is what the server records for us
            // (what synchronous_standby_names waits on).
            let done = Lsn(start.0 + SEG);
            r.report(done, done, true).await.unwrap();
            wait_for(
                "the reported flush position",
                Duration::from_secs(30),
                || {
                    let seen = c.psql(
                    "select flush_lsn from pg_stat_replication where application_name = 'walvault'",
                );
                    Lsn::parse(&seen).is_ok_and(|l| l == done)
                },
            );
            let held = c.psql(
                "select restart_lsn from pg_replication_slots where slot_name = 'walvault_t'",
            );
            assert!(
                Lsn::parse(&held).unwrap() >= done,
                "the slot advances with the report"
            );
            drop(r);
        });
        c.stop();
    }
}

/// Streams, through the slot `walvault_t`, the segment that holds `reserved`,
/// while the server fills and switches it. Returns its name and bytes.
async fn stream_one_segment(
    r: &mut Replication,
    c: &Cluster,
    reserved: Lsn,
    major: u32,
) -> (String, Vec<u8>) {
    let start = Lsn(reserved.0 / SEG * SEG);
    let name = c
        .psql(&format!("select pg_walfile_name('{reserved}')"))
        .trim()
        .to_string();
    r.start(Some("walvault_t"), start, 1).await.unwrap();
    c.psql("create table t as select g from generate_series(1, 20000) g");
    c.psql("select pg_switch_wal()");
    let mut got = Vec::with_capacity(SEG as usize);
    let mut at = start;
    while at.0 < start.0 + SEG {
        let ev = tokio::time::timeout(Duration::from_secs(60), r.next())
            .await
            .expect("WAL within a minute")
            .unwrap();
        match ev {
            Event::Data { start: s, data, .. } => {
                assert_eq!(s, at, "PostgreSQL {major}: contiguous stream");
                let take = data.len().min((start.0 + SEG - at.0) as usize);
                got.extend_from_slice(&data[..take]);
                at = Lsn(at.0 + data.len() as u64);
            }
            Event::Keepalive { reply, .. } => {
                if reply {
                    r.report(at, at, false).await.unwrap();
                }
            }
            Event::TimelineEnd { .. } => panic!("PostgreSQL {major}: no promotion here"),
        }
    }
    (name, got)
}

/// A segment the receiver stores and the one PostgreSQL's archiver pushes are
/// one object: the second writer finds its own bytes (exit 0), a different
/// copy is refused, and wal-fetch serves the server's bytes.
#[test]
fn a_streamed_segment_is_the_object_wal_push_stores() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pg_tempdir();
    let mut env = fs_repo(root.path());
    let id = root.path().join("id.age");
    let recipient = keygen(&id);
    env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient.clone());
    env.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        id.display().to_string(),
    );
    let mut c = Cluster::init(root.path(), "p");
    c.start(&base_env());
    let spool = root.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let repo = root.path().join("repo");
    let store = walvault::store::fs::FsStore::new(repo.clone());
    let codec = walvault::codec::Codec::new(1, vec![recipient.parse().unwrap()], None);
    let (name, got) = rt.block_on(async {
        let mut r = Replication::connect(&session_config(&c, "postgres"))
            .await
            .unwrap();
        r.create_slot("walvault_t").await.unwrap();
        let reserved = Lsn::parse(
            &c.psql("select restart_lsn from pg_replication_slots where slot_name = 'walvault_t'"),
        )
        .unwrap();
        let (name, got) = stream_one_segment(&mut r, &c, reserved, 15).await;
        let path = spool.join(&name);
        std::fs::write(&path, &got).unwrap();
        let len = walvault::wal::push::store_file(&store, &codec, &path)
            .await
            .unwrap();
        assert_eq!(len, SEG);
        // Stored again by the same writer: identical, so success.
        walvault::wal::push::store_file(&store, &codec, &path)
            .await
            .unwrap();
        (name, got)
    });
    chown_pg(&repo);

    // PostgreSQL's archiver arrives second with the same segment.
    let wal = c.pgdata.join("pg_wal").join(&name);
    let out = walvault(&["wal-push", wal.to_str().unwrap()], &env, None);
    assert!(out.status.success(), "wal-push: {}", stderr(&out));
    assert!(
        stderr(&out).contains("identical content"),
        "{}",
        stderr(&out)
    );
    assert!(fetched(&env, root.path(), &name) == got);

    // A different copy under the same name is refused and changes nothing.
    let mut other = got.clone();
    other[SEG as usize - 1] ^= 0xff;
    let path = spool.join(&name);
    std::fs::write(&path, &other).unwrap();
    let e = rt
        .block_on(walvault::wal::push::store_file(&store, &codec, &path))
        .unwrap_err();
    assert!(format!("{e:#}").contains("DIFFERENT content"), "{e:#}");
    assert!(fetched(&env, root.path(), &name) == got);
    c.stop();
}

#[test]
fn refusals_are_one_line_in_the_servers_words() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pg_tempdir();
    let mut c = Cluster::init(root.path(), "p");
    c.start(&base_env());
    c.psql("create role plain login");
    rt.block_on(async {
        let mut r = Replication::connect(&session_config(&c, "postgres"))
            .await
            .unwrap();
        let e = r.start(Some("nope"), Lsn(0x100_0000), 1).await.unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("replication slot \"nope\" does not exist"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        // The session is still usable after a refused command.
        r.identify_system().await.unwrap();
        assert!(r.create_slot("Bad Name").await.is_err());

        let e = Replication::connect(&session_config(&c, "plain"))
            .await
            .err()
            .expect("a role without REPLICATION is refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("SQLSTATE 42501"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");

        // Nothing listening: the socket named, one line.
        let port = free_port();
        let gone = walvault::pg::conn::resolve(Some(&format!(
            "host={} port={port} user=postgres",
            c.sockdir.display()
        )))
        .unwrap();
        let e = Replication::connect(&gone)
            .await
            .err()
            .expect("no server there");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("cannot open a replication connection"),
            "{msg}"
        );
        assert!(msg.contains(&format!(".s.PGSQL.{port}")), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    });
    c.stop();
}

/// Password authentication as pg_hba asks for it: SCRAM-SHA-256 and md5, and a
/// wrong password refused in one line.
#[test]
fn scram_and_md5_passwords() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pg_tempdir();
    let mut c = Cluster::init(root.path(), "p");
    std::fs::write(
        c.pgdata.join("pg_hba.conf"),
        "local replication scram_user scram-sha-256\n\
         local replication md5_user md5\n\
         local all all trust\n",
    )
    .unwrap();
    c.start(&base_env());
    c.psql("create role scram_user login replication password 'sekret-1'");
    c.psql("set password_encryption = 'md5'; create role md5_user login replication password 'sekret-2'");
    let with = |user: &str, password: &str| {
        walvault::pg::conn::resolve(Some(&format!(
            "host={} port={} user={user} password={password}",
            c.sockdir.display(),
            c.port
        )))
        .unwrap()
    };
    rt.block_on(async {
        for (user, password) in [("scram_user", "sekret-1"), ("md5_user", "sekret-2")] {
            let mut r = Replication::connect(&with(user, password))
                .await
                .unwrap_or_else(|e| panic!("{user}: {e:#}"));
            r.identify_system().await.unwrap();
        }
        for user in ["scram_user", "md5_user"] {
            let e = Replication::connect(&with(user, "wrong"))
                .await
                .err()
                .expect("a wrong password is refused");
            let msg = format!("{e:#}");
            assert!(msg.contains("password authentication failed"), "{msg}");
            assert!(msg.contains("SQLSTATE 28P01"), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains("wrong"), "{msg}");
        }
    });
    c.stop();
}

/// From a standby (cascading) across its promotion: the stream of timeline 1
/// ends where the new timeline's history says, and timeline 2 streams from
/// exactly there.
#[test]
fn follows_a_standby_through_its_promotion() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = pg_tempdir();
    let mut p = Cluster::init(root.path(), "p");
    p.start(&base_env());
    let mut s = p.streaming_standby(root.path(), "s");
    s.start(&base_env());
    assert_eq!(s.psql("select pg_is_in_recovery()"), "t");

    rt.block_on(async {
        let mut r = Replication::connect(&session_config(&s, "postgres"))
            .await
            .unwrap();
        let sys = r.identify_system().await.unwrap();
        assert_eq!(sys.timeline, 1);
        let start = Lsn(sys.position.0 / SEG * SEG);
        r.start(None, start, 1).await.unwrap();
        p.psql("create table t as select g from generate_series(1, 1000) g");
        let written = Lsn::parse(&p.psql("select pg_current_wal_flush_lsn()")).unwrap();
        wait_for("the standby to replay", Duration::from_secs(30), || {
            Lsn::parse(&s.psql("select pg_last_wal_replay_lsn()")).is_ok_and(|l| l >= written)
        });
        s.psql("select pg_promote()");

        // Timeline 1 to its end on the standby, then its successor.
        let mut at = start;
        let next = loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), r.next())
                .await
                .expect("the stream goes on or ends within a minute")
                .unwrap();
            match ev {
                Event::Data {
                    start: st, data, ..
                } => {
                    assert_eq!(st, at, "contiguous");
                    at = Lsn(at.0 + data.len() as u64);
                }
                Event::Keepalive { reply, .. } => {
                    if reply {
                        r.report(at, at, false).await.unwrap();
                    }
                }
                Event::TimelineEnd { next } => break next.expect("the next timeline named"),
            }
        };
        let (tli, switch) = next;
        assert_eq!(tli, 2);
        assert_eq!(at, switch, "timeline 1 streamed up to its switch point");
        let (name, content) = r.timeline_history(2).await.unwrap();
        assert_eq!(name, "00000002.history");
        let text = String::from_utf8(content.to_vec()).unwrap();
        assert!(text.starts_with(&format!("1\t{switch}\t")), "{text}");
        assert_eq!(r.identify_system().await.unwrap().timeline, 2);

        r.start(None, switch, 2).await.unwrap();
        s.psql("create table u as select g from generate_series(1, 1000) g");
        let first = loop {
            match tokio::time::timeout(Duration::from_secs(60), r.next())
                .await
                .expect("timeline 2 streams")
                .unwrap()
            {
                Event::Data { start, .. } => break start,
                Event::Keepalive { .. } => {}
                Event::TimelineEnd { .. } => panic!("timeline 2 is the latest"),
            }
        };
        assert_eq!(first, switch, "timeline 2 streams from its first byte");
    });
    s.stop();
    p.stop();
}
