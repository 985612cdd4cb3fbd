//! A cluster's life, not one step: a primary archiving under load into an
//! encrypted S3 repository (its host holds only the public recipient), nightly
//! backups, a bad DELETE, a point-in-time recovery promoted as the new primary
//! (timeline 2), backups of the new primary, every key-less job across the
//! timeline switch, retention, a crash and a recovery of everything from the
//! newest backup, and drills that pass and fail. Exact row counts at each step.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn backup_of(c: &Cluster, env: &BTreeMap<String, String>) -> String {
    let out = walvault(&["backup-push", "--fast"], &c.pg_env(env), None);
    ok(&out, "backup-push").trim().to_string()
}

#[test]
fn a_cluster_through_failover_retention_a_crash_and_drills() {
    let weed = Seaweed::start();
    let root = pg_tempdir();
    let idfile = root.path().join("identity.txt");
    let recipient = keygen(&idfile);
    // The database hosts hold only the recipient; restores hold the identity too.
    let mut keyless = weed.walvault_env("life");
    keyless.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
    let mut keyed = keyless.clone();
    keyed.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        idfile.display().to_string(),
    );

    // 1. A primary archiving under pgbench; two nightly backups.
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on\nwal_keep_size = 512MB");
    a.start(&keyless);
    a.psql("create table t(i bigint primary key, note text)");
    a.pgbench(&["-i", "-s", "1", "-q"]);
    insert(&a, 1, 100);
    let b1 = under_load(&a, || backup_of(&a, &keyless));
    insert(&a, 101, 200);
    let b2 = under_load(&a, || backup_of(&a, &keyless));
    insert(&a, 201, 210);
    a.flush_archive();

    // 2. The bad DELETE, after a time the DBA notes.
    std::thread::sleep(Duration::from_millis(50));
    let before_delete = now_utc(&a);
    std::thread::sleep(Duration::from_millis(50));
    a.psql("delete from t where i > 100");
    insert(&a, 211, 215);
    a.flush_archive();
    assert_eq!(a.archiver_failed_count(), 0);
    a.stop();

    // 3. Recover to before the DELETE and promote: the new primary (timeline 2),
    // archiving into the same repository.
    let mut p = Cluster::at(root.path(), "p");
    let mut args = p.recover_args();
    args.extend(
        [
            "--target-time",
            &before_delete,
            "--archive",
            "--target-action",
            "promote",
        ]
        .map(String::from),
    );
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &keyed,
        None,
    );
    let text = ok(&out, "recover to before the DELETE");
    assert!(text.contains("checked:  last replayed commit"), "{text}");
    p.adopt();
    p.wait_promoted(Duration::from_secs(60));
    assert_eq!(summary(&p), expected(&[(1, 210)]), "the DELETE undone");
    assert_eq!(
        p.psql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    let auto = std::fs::read_to_string(p.pgdata.join("postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("restore_command").count(), 1, "{auto}");

    // 4. Backups of the new primary; its configuration still carries the
    // recovery it came from (the case that lost rows).
    p.psql("checkpoint");
    insert(&p, 300, 310);
    let c1 = under_load(&p, || backup_of(&p, &keyless));
    insert(&p, 311, 320);
    let c2 = backup_of(&p, &keyless);
    insert(&p, 321, 330);
    p.pgbench(&["-n", "-t", "200", "-c", "2"]);
    p.flush_archive();
    let rows_before_crash = summary(&p);
    let bank_before_crash = p.pgbench_checksum();
    assert_eq!(rows_before_crash, expected(&[(1, 210), (300, 330)]));

    // 5. Every job that needs no key, across the timeline switch.
    let status = walvault(&["status", "--json"], &p.pg_env(&keyless), None);
    let v: serde_json::Value = serde_json::from_str(&ok(&status, "status")).unwrap();
    assert_eq!(v["repository_up"], true, "{v}");
    assert!(
        v["last_archived_segment"]
            .as_str()
            .unwrap()
            .starts_with("00000002"),
        "{v}"
    );
    let list = walvault(&["backup-list", "--json"], &keyless, None);
    let v: serde_json::Value = serde_json::from_str(&ok(&list, "backup-list")).unwrap();
    let ids: Vec<&str> = v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&b1, &b2, &c1, &c2]);
    assert_eq!(v["window"]["timeline"], 2);
    ok(&walvault(&["wal-verify"], &keyless, None), "wal-verify");
    ok(
        &walvault(&["verify", "--wal"], &keyless, None),
        "verify --wal",
    );
    let del = walvault(&["delete", "--keep-last", "1", "--confirm"], &keyless, None);
    let text = ok(&del, "delete --keep-last 1 --confirm");
    let list = walvault(&["backup-list", "--json"], &keyless, None);
    let v: serde_json::Value = serde_json::from_str(&ok(&list, "backup-list")).unwrap();
    let left: Vec<&str> = v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, [&c2], "{text}");
    assert!(
        weed.list("life/wal/")
            .iter()
            .any(|k| k.ends_with("00000002.history")),
        "history files stay"
    );

    // 6. A crash, and everything back from the newest backup.
    if let Some(pid) = p.pid() {
        stop_pid(pid, libc::SIGQUIT, Duration::from_secs(30));
    }
    let mut d = Cluster::at(root.path(), "d");
    let mut args = d.recover_args();
    args.extend(["--target", "latest"].map(String::from));
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &keyed,
        None,
    );
    let text = ok(&out, "recover --target latest");
    assert!(text.contains(&format!("backup:   {c2}")), "{text}");
    assert!(
        text.contains("checked:  replay reached the end of the archive on timeline 2"),
        "{text}"
    );
    d.adopt();
    d.wait_promoted(Duration::from_secs(60));
    assert_eq!(summary(&d), rows_before_crash, "every committed row");
    assert_eq!(d.pgbench_checksum(), bank_before_crash);
    d.stop();

    // 7. A drill that passes, and one whose target the archive does not hold.
    let scratch = root.path().join("scratch");
    let reports = root.path().join("reports");
    for dir in [&scratch, &reports] {
        std::fs::create_dir_all(dir).unwrap();
        chown_pg(dir);
    }
    let drill = |extra: &[&str]| {
        let mut args = vec![
            "drill",
            "--scratch-dir",
            scratch.to_str().unwrap(),
            "--report-dir",
            reports.to_str().unwrap(),
            "--no-upload",
        ];
        args.extend_from_slice(extra);
        walvault(&args, &keyed, None)
    };
    let out = drill(&[]);
    let text = ok(&out, "drill");
    assert!(text.contains("drill PASSED"), "{text}");
    let out = drill(&["--target-xid", "3000000000"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a target beyond the archive fails the drill: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "scratch removed"
    );
}
