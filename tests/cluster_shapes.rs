//! Clusters unlike initdb's defaults, through archive, backup and recovery:
//! WAL segments of 1 and 64 MiB, data checksums, unlogged and temporary
//! tables, a relation past 1 GiB (its `.1` file) and files larger than a
//! backup part.

mod common;

use common::*;
use std::time::Duration;

/// Archive, backup, prefetch and exact point-in-time recovery with WAL segments
/// of 1 and 64 MiB (initdb --wal-segsize).
#[test]
fn wal_segments_of_1_and_64_mib() {
    for mib in [1u64, 64] {
        let root = pg_tempdir();
        let env = fs_repo(root.path());
        let mut a = Cluster::init_args(root.path(), "a", &["--wal-segsize", &mib.to_string()]);
        a.archive_to_walvault();
        a.conf("track_commit_timestamp = on");
        a.start(&env);
        let s = Source {
            root,
            a,
            env: env.clone(),
        };
        let a = &s.a;
        a.psql("create table t (i bigint primary key, note text)");
        insert(a, 1, 20);
        let id = s.backup();
        // Several segments of replay after the backup, for the prefetcher.
        a.psql(
            "create table filler as select g, md5(g::text) as m from generate_series(1, 60000) g",
        );
        // More segments than the prefetcher downloads at once, so that it
        // gets ahead of replay whatever the segment size.
        for _ in 0..10 {
            a.psql("insert into filler values (0, 'x')");
            a.switch_wal();
        }
        insert(a, 21, 40);
        let target = now_utc(a);
        insert(a, 41, 60);
        let last = a.switch_wal();
        a.wait_archived(&last, Duration::from_secs(120));

        let manifest = manifest_json(&env, &id);
        assert_eq!(manifest["wal_segment_size"], mib << 20, "{mib} MiB");
        ok(&walvault(&["wal-verify"], &env, None), "wal-verify");
        let scratch = pg_tempdir();
        let fetched = scratch.path().join("seg");
        ok(
            &walvault(&["wal-fetch", &last, fetched.to_str().unwrap()], &env, None),
            "wal-fetch",
        );
        let original = std::fs::read(a.pgdata.join("pg_wal").join(&last)).unwrap();
        assert_eq!(original.len() as u64, mib << 20);
        assert!(
            std::fs::read(&fetched).unwrap() == original,
            "{last} fetched back byte for byte ({mib} MiB)"
        );

        let b = s.recover("b", &["--target-time", &target]);
        assert_eq!(
            summary(&b),
            expected(&[(1, 40)]),
            "{mib} MiB segments: rows up to the target only"
        );
        let log = std::fs::read_to_string(b.pgdata.join("walvault-recover.log")).unwrap();
        assert!(
            log.contains("from the prefetch spool"),
            "{mib} MiB segments: recovery never used the prefetch spool:\n{log}"
        );
        drop(b);
        let c = s.recover("c", &[]);
        assert_eq!(summary(&c), expected(&[(1, 60)]), "{mib} MiB: latest");
    }
}

/// Data checksums on (initdb -k, PostgreSQL 18's default), a relation past
/// 1 GiB and backup parts of 64 MiB, an unlogged table and a temporary table
/// open during the backup: the backup leaves out what pg_basebackup leaves out
/// (unlogged relations' non-init forks, temporary files), the restored cluster
/// passes pg_checksums, its unlogged table is empty and usable, and the big
/// relation reads back whole.
#[test]
fn checksums_unlogged_temporary_and_big_files() {
    let root = pg_tempdir();
    let mut env = fs_repo(root.path());
    env.insert("WALVAULT_BACKUP_PART_SIZE_MB".into(), "64".into());
    let mut a = Cluster::init_args(root.path(), "a", &["-k"]);
    a.archive_to_walvault();
    a.start(&env);
    let s = Source {
        root,
        a,
        env: env.clone(),
    };
    let a = &s.a;
    assert_eq!(a.psql("show data_checksums"), "on");
    // About 1.1 GiB of heap: a 1 GiB segment file and its `.1` beside it.
    a.psql("create table big as select g, repeat(md5(g::text), 16) as pad from generate_series(1, 2000000) g");
    let big_path = a.psql("select pg_relation_filepath('big')");
    assert!(
        a.pgdata.join(format!("{big_path}.1")).exists(),
        "the relation has a second 1 GiB segment"
    );
    let big_sum = a.psql("select count(*) || ':' || sum(g) || ':' || sum(length(pad)) from big");
    a.psql("create unlogged table u (i int primary key, note text)");
    a.psql("insert into u select g, 'unlogged' from generate_series(1, 5000) g");
    let u_path = a.psql("select pg_relation_filepath('u')");

    // A temporary table held open by another session during the backup.
    let mut holder = pg_command(
        &format!("{PG_BIN}/psql"),
        &std::collections::BTreeMap::new(),
    )
    .args(["-X", "-U", "postgres", "-d", "postgres", "-h"])
    .arg(&a.sockdir)
    .args(["-p", &a.port.to_string()])
    // Two commands, two transactions: the table is committed, then held.
    .args([
        "-c",
        "create temp table tmp as select g from generate_series(1, 50000) g",
    ])
    .args(["-c", "select pg_sleep(600)"])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut tmp_path = String::new();
    wait_for("the temporary table", Duration::from_secs(30), || {
        tmp_path = a.psql("select coalesce(max(pg_relation_filepath(oid)), '') from pg_class where relname = 'tmp' and relpersistence = 't'");
        !tmp_path.is_empty()
    });
    assert!(a.pgdata.join(&tmp_path).exists(), "{tmp_path}");
    let id = s.backup();
    let _ = holder.kill();
    let _ = holder.wait();
    let manifest = manifest_json(&env, &id);
    let parts = manifest["parts"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .any(|p| p["raw_bytes"].as_u64().unwrap() > 1 << 30),
        "a part holds the 1 GiB file, past backup.part_size_mb: {parts:#?}"
    );
    assert!(parts.len() >= 2, "{parts:#?}");

    // Restored without starting: what the backup left out is not there.
    let b = Cluster::at(s.root.path(), "b");
    ok(
        &walvault(
            &["recover", "--pgdata", b.pgdata.to_str().unwrap()],
            &env,
            None,
        ),
        "recover",
    );
    assert!(
        !b.pgdata.join(&u_path).exists(),
        "the unlogged table's main fork is not restored"
    );
    assert!(
        b.pgdata.join(format!("{u_path}_init")).exists(),
        "its init fork is"
    );
    assert!(!b.pgdata.join(&tmp_path).exists(), "no temporary file");
    let mut b = b;
    b.start(&env);
    b.wait_promoted(Duration::from_secs(120));
    assert_eq!(b.psql("select count(*) from u"), "0", "unlogged: empty");
    b.psql("insert into u values (1, 'usable')");
    assert_eq!(b.psql("select note from u"), "usable");
    assert_eq!(
        b.psql("select count(*) || ':' || sum(g) || ':' || sum(length(pad)) from big"),
        big_sum,
        "the relation past 1 GiB, whole"
    );
    b.stop();
    let out = pg_command(
        &format!("{PG_BIN}/pg_checksums"),
        &std::collections::BTreeMap::new(),
    )
    .args(["--check", "-D"])
    .arg(&b.pgdata)
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Bad checksums:  0"),
        "pg_checksums on the restored cluster: {text}{}",
        stderr(&out)
    );
}
