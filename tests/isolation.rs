//! A restored copy beside production: it cannot clear production's
//! tablespace, cannot pull from production's publishers, and finds its archive
//! when restarted with nothing in its environment.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// `pg_ctl start` with an empty environment (PATH only), as an init system
/// that knows nothing of walvault would start it.
fn start_bare(c: &mut Cluster) {
    std::fs::create_dir_all(&c.sockdir).unwrap();
    chown_pg(&c.sockdir);
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]);
        cmd.arg("env");
        cmd
    } else {
        Command::new("env")
    };
    cmd.args(["-i", "PATH=/usr/bin:/bin"])
        .arg(format!("{PG_BIN}/pg_ctl"))
        .arg("-D")
        .arg(&c.pgdata)
        .arg("-l")
        .arg(c.log_path())
        .arg("-o")
        .arg(format!("-p {} -k {}", c.port, c.sockdir.display()))
        .args(["-w", "-t", "120", "start"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "pg_ctl start with an empty environment: {}\n{}",
        stderr(&out),
        c.log_tail()
    );
    c.adopt();
}

#[test]
fn a_recovered_server_restarted_with_an_empty_environment_finds_its_archive() {
    let s = source(|root| {
        let mut env = fs_repo(root);
        let idfile = root.join("identity.txt");
        env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), keygen(&idfile));
        env.insert(
            "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
            idfile.display().to_string(),
        );
        env
    });
    s.a.psql("create table t(i int primary key)");
    s.a.psql("insert into t select generate_series(1, 100)");
    s.backup();
    s.a.psql("insert into t select generate_series(101, 250)");
    s.flush_archive();

    let mut b = Cluster::at(s.root.path(), "bare");
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            b.pgdata.to_str().unwrap(),
            "--target",
            "latest",
        ],
        &s.env,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let auto = std::fs::read_to_string(b.pgdata.join("postgresql.auto.conf")).unwrap();
    let restore: Vec<&str> = auto
        .lines()
        .filter(|l| l.starts_with("restore_command"))
        .collect();
    assert_eq!(restore.len(), 1, "{auto}");
    assert!(
        restore[0].contains("--set ''repo=file://")
            && restore[0].contains("encryption.identity_file="),
        "{auto}"
    );
    start_bare(&mut b);
    b.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        b.psql("select count(*) || ':' || sum(i) from t"),
        "250:31375"
    );
}

#[test]
fn a_side_copy_cannot_touch_production() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());

    // A publisher, and production subscribing to it.
    let mut publisher = Cluster::init(root.path(), "publisher");
    publisher.conf("wal_level = logical");
    publisher.start(&base_env());
    publisher.psql("create table items(id int primary key)");
    publisher.psql("insert into items select generate_series(1, 10)");
    publisher.psql("create publication pub for table items");

    let mut prod = Cluster::init(root.path(), "prod");
    prod.archive_to_walvault();
    prod.start(&env);
    let ts_dir = root.path().join("prod-ts");
    std::fs::create_dir(&ts_dir).unwrap();
    chown_pg(&ts_dir);
    prod.psql(&format!(
        "create tablespace ts1 location '{}'",
        ts_dir.display()
    ));
    let oid = prod.psql("select oid from pg_tablespace where spcname = 'ts1'");
    prod.psql("create table lots(id int) tablespace ts1");
    prod.psql("insert into lots select generate_series(1, 1000)");
    prod.psql("create table items(id int primary key)");
    prod.psql(&format!(
        "create subscription sub connection 'host={} port={} user=postgres dbname=postgres' publication pub",
        publisher.sockdir.display(),
        publisher.port
    ));
    wait_for(
        "the subscription's first copy",
        Duration::from_secs(60),
        || prod.psql("select count(*) from items") == "10",
    );
    let out = walvault(&["backup-push", "--fast"], &prod.pg_env(&env), None);
    assert!(out.status.success(), "{}", stderr(&out));
    // Production goes on: more rows in its tablespace, and its subscription
    // paused by the DBA (the publisher's slot is then free).
    prod.psql("insert into lots select generate_series(1001, 2000)");
    prod.psql("alter subscription sub disable");
    let slot_active = || {
        publisher.psql("select coalesce(bool_or(active), false) from pg_replication_slots where slot_name = 'sub'")
    };
    wait_for("the slot to be released", Duration::from_secs(60), || {
        slot_active() == "f"
    });
    prod.flush_archive();

    // The tablespace's original location is production's: refused, also with
    // --overwrite and in a dry run, naming the mapping to give.
    let copy_dir = root.path().join("copy");
    for extra in [&[][..], &["--overwrite"][..], &["--dry-run"][..]] {
        let mut args = vec!["recover", "--pgdata", copy_dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = walvault(&args, &env, None);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        let e = stderr(&out);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(
            e.contains(&format!("--tablespace-map {oid}=")) && e.contains(ts_dir.to_str().unwrap()),
            "{extra:?}: {e}"
        );
        assert!(!copy_dir.exists(), "{extra:?}: nothing written");
    }
    // A mapped directory outside --pgdata that is not empty is never cleared.
    let busy = root.path().join("busy-ts");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep-me"), b"x").unwrap();
    chown_pg(&busy);
    let map = format!("{oid}={}", busy.display());
    let out = walvault(
        &[
            "recover",
            "--pgdata",
            copy_dir.to_str().unwrap(),
            "--tablespace-map",
            &map,
            "--overwrite",
        ],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("never clears a directory outside --pgdata"),
        "{}",
        stderr(&out)
    );
    assert!(busy.join("keep-me").exists());
    // Production's tablespace is whole, also after a restart.
    prod.stop();
    prod.start(&env);
    assert_eq!(prod.psql("select count(*) from lots"), "2000");

    // The copy, mapped elsewhere, started beside production.
    let mut copy = Cluster::at(root.path(), "copy");
    let mut args = copy.recover_args();
    let map = format!("{oid}={}", root.path().join("copy-ts").display());
    // At the end of the backup: the subscription was still enabled then.
    args.extend(["--target", "immediate", "--tablespace-map", &map].map(String::from));
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.contains("isolated:"), "{text}");
    copy.adopt();
    copy.wait_promoted(Duration::from_secs(60));
    assert_eq!(copy.psql("select count(*) from lots"), "1000");
    assert_eq!(copy.psql("show archive_mode"), "off");
    assert_eq!(copy.psql("show max_logical_replication_workers"), "0");
    // The copy's subscription is enabled (it was at the backup) but no worker
    // runs it: the publisher's slot stays free. An apply worker starts within
    // a second or two of the server; give it five.
    assert_eq!(
        copy.psql("select subenabled from pg_subscription where subname = 'sub'"),
        "t"
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            slot_active(),
            "f",
            "the copy pulled from production's publisher"
        );
        assert_eq!(
            copy.psql("select count(*) from pg_stat_subscription where pid is not null"),
            "0"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
