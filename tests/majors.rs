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

/// `recover --start` into `dir` that must be refused in one line, writing
/// nothing; the line.
fn recover_refused(dir: &Path, env: &BTreeMap<String, String>) -> String {
    let out = walvault(
        &["recover", "--pgdata", dir.to_str().unwrap(), "--start"],
        env,
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!dir.exists(), "nothing written");
    err
}

/// Sets the LSN of the page holding row 1 of table f back to 0/1, before any
/// backup's start, its checksum recomputed when the cluster has them: what
/// decides "changed" must not be the page's LSN. The server is restarted.
fn forge_lsn(a: &mut Cluster, env: &BTreeMap<String, String>) {
    use std::os::unix::fs::FileExt;
    a.psql("checkpoint");
    let file = a.pgdata.join(a.psql("select pg_relation_filepath('f')"));
    let block: u64 = a
        .psql("select (ctid::text::point)[0]::int from f where i = 1")
        .parse()
        .unwrap();
    let checksums = a.psql("show data_checksums") == "on";
    a.stop();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let mut page = vec![0u8; 8192];
    f.read_exact_at(&mut page, block * 8192).unwrap();
    page[..8].copy_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0]);
    if checksums {
        let sum = walvault::backup::page::checksum(&page, block as u32);
        page[8..10].copy_from_slice(&sum.to_le_bytes());
    }
    f.write_all_at(&page, block * 8192).unwrap();
    drop(f);
    a.start(env);
}

/// The whole life of one cluster of PostgreSQL `major`.
fn a_cluster_of(major: u32) {
    let t0 = std::time::Instant::now();
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
    if major >= 17 {
        // WAL summaries: the incremental reads only the blocks they name.
        a.conf("summarize_wal = on");
    }
    a.start(&env);
    let version: u32 = a.psql("show server_version_num").parse().unwrap();
    assert_eq!(version / 10000, major, "the server under test");
    if major >= 18 {
        // PostgreSQL 18's initdb turns page checksums on: backups must not mind.
        assert_eq!(a.psql("show data_checksums"), "on");
    }

    // The archive loop under pgbench, with a base backup taken under load.
    a.psql("create table t(i bigint primary key, note text)");
    // A row updated between the full and the incremental, its page's LSN
    // then forged older than the full's start (below).
    a.psql("create table f(i int primary key, v text)");
    a.psql("insert into f select g, 'before' from generate_series(1, 300) g");
    // An unlogged table: backups leave out its data but its init fork, and every
    // major must bring it back empty and usable.
    a.psql("create unlogged table u(i int primary key)");
    a.psql("insert into u select generate_series(1, 1000)");
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
    assert!(
        b.get("checksum_failures").is_none(),
        "PostgreSQL {major}: {b}"
    );
    // The checks a DBA runs against this major's server and repository.
    let status = ok(&walvault(&["status"], &a.pg_env(&env), None), "status");
    assert!(
        status.contains(&format!("archiver       last archived {last}"))
            && status.contains("; 0 failure(s)"),
        "{status}"
    );
    ok(&walvault(&["wal-verify"], &env, None), "wal-verify");
    ok(&walvault(&["verify"], &env, None), "verify");

    a.psql("update f set v = 'after' where i = 1");
    forge_lsn(&mut a, &env);

    // An incremental on it: what the recoveries and the drill below restore.
    let incr = ok(
        &walvault(
            &["backup-push", "--fast", "--incremental"],
            &a.pg_env(&env),
            None,
        ),
        "backup-push --incremental",
    )
    .trim()
    .to_string();
    let m = manifest_json(&env, &incr);
    assert_eq!(m["parent"], backup.as_str(), "PostgreSQL {major}: {m}");
    assert!(
        m.get("checksum_failures").is_none(),
        "PostgreSQL {major}: {m}"
    );
    assert!(
        m["stored_bytes"].as_u64().unwrap() < b["stored_bytes"].as_u64().unwrap(),
        "PostgreSQL {major}: the incremental stores less than the full"
    );
    let how = if major >= 17 {
        "block hashes and WAL summaries"
    } else {
        "block hashes"
    };
    assert_eq!(
        (m["changes_from"].as_str(), m["format"].as_u64()),
        (Some(how), Some(4)),
        "PostgreSQL {major}: {m}"
    );

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
    let err = recover_refused(&refused, &wrong);
    assert!(
        err.contains(&format!("is of PostgreSQL {major}"))
            && err.contains(&format!("holds PostgreSQL {other}'s server")),
        "names both majors: {err}"
    );

    // With no setting and PostgreSQL 15's pg_ctl first on PATH (as on a host
    // where a plain `pg_ctl` is 15), another major's backup is not started with it.
    if major != 15 {
        let path15 = root.path().join("path15");
        std::fs::create_dir_all(&path15).unwrap();
        for prog in ["pg_ctl", "postgres"] {
            std::os::unix::fs::symlink(format!("{PG_BIN}/{prog}"), path15.join(prog)).unwrap();
        }
        let mut plain = env.clone();
        plain.remove(&format!("WALVAULT_POSTGRES_BIN_DIR_{major}"));
        plain.insert("PATH".into(), format!("{}:/usr/bin:/bin", path15.display()));
        let err = recover_refused(&refused, &plain);
        assert!(
            err.contains(&format!("PostgreSQL {major}'s pg_ctl and postgres not found: looked in /usr/lib/postgresql/{major}/bin (none)"))
                && err.contains(&format!("{} (PostgreSQL 15)", path15.display()))
                && err.contains(&format!("set postgres.bin_dir_{major}")),
            "{err}"
        );
    }

    // Exact to the row between the two commits: paused there (watched through
    // each major's own pause function), and promoted.
    let (mut q, text) = recover_new(
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
    assert_eq!(
        q.psql("select v from f where i = 1"),
        "after",
        "PostgreSQL {major}: the page with a forged LSN was taken"
    );
    q.stop();
    let (mut p, text) = recover_new(
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
    let (mut l1, text) = recover_new(
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
    assert_eq!(
        l1.psql("select count(*) from u"),
        "0",
        "PostgreSQL {major}: an unlogged table comes back empty"
    );
    l1.psql("insert into u values (1)");
    assert_eq!(l1.psql("select count(*) from u"), "1", "and usable");
    l1.stop();
    let (mut l2, _) = recover_new(root.path(), "l2", major, &["--target", "latest"], &env);
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
    eprintln!(
        "PostgreSQL {major} (server_version_num {version}): the whole scenario passed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
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

/// PostgreSQL 12 (older than walvault supports): its WAL is refused at wal-push
/// and backup-push refuses the server before anything is stored; both name 12
/// and the majors walvault knows.
#[test]
fn an_unsupported_major_is_refused_before_anything_is_stored() {
    let root = pg_tempdir();
    let env = fs_repo(root.path());
    let repo = root.path().join("repo");
    let mut a = Cluster::init_major(root.path(), "a", 12);
    a.archive_to_walvault();
    a.start(&env);
    a.psql("create table t(i int)");
    let seg = a.switch_wal();
    wait_for("a failed push", Duration::from_secs(60), || {
        a.archiver_failed_count() > 0
    });
    let last_failed = a.psql("select last_failed_wal from pg_stat_archiver");
    assert!(last_failed.as_str() <= seg.as_str(), "{last_failed} {seg}");
    let log = std::fs::read_to_string(a.log_path()).unwrap();
    assert!(
        log.contains(
            "PostgreSQL 12 (PG_VERSION of the data directory; WAL page magic 0xD101) is not supported: walvault"
        ) && log.contains("supports PostgreSQL 13 to 18"),
        "{}",
        a.log_tail()
    );
    let out = walvault(&["backup-push", "--fast"], &a.pg_env(&env), None);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("PostgreSQL 12 (the server's server_version_num is 12")
            && err.contains("supports PostgreSQL 13 to 18"),
        "{err}"
    );
    let stored: Vec<_> = std::fs::read_dir(&repo).unwrap().collect();
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
    a.stop();
}

/// A major upgrade by pg_upgrade, 15 to 16: the upgraded cluster has a new
/// system identifier, and one command switches it to a new repository. The old
/// repository stays recoverable to any time before the upgrade, with 15's
/// binaries, under its own retention; each repository names the other.
#[test]
fn pg_upgrade_switches_to_a_new_repository_and_the_old_stays_recoverable() {
    let new_bin = upgrade_bin();
    let root = pg_tempdir();
    let (old_repo, new_repo) = (root.path().join("old-repo"), root.path().join("new-repo"));
    for d in [&old_repo, &new_repo] {
        std::fs::create_dir_all(d).unwrap();
        chown_pg(d);
    }
    let (old_url, new_url) = (
        format!("file://{}", old_repo.display()),
        format!("file://{}", new_repo.display()),
    );
    let config = root.path().join("walvault.toml");
    let config_text = |repo: &str| {
        format!("# the database host's settings\nrepo = \"{repo}\"  # archive here\n\n[fetch]\nretries = 1\n")
    };
    std::fs::write(&config, config_text(&old_url)).unwrap();
    chown_pg(&config);
    let mut env = base_env();
    env.insert("WALVAULT_CONFIG".into(), config.display().to_string());
    env.insert(
        "WALVAULT_POSTGRES_BIN_DIR_16".into(),
        new_bin.display().to_string(),
    );
    let with_old = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["--set".to_string(), format!("repo={old_url}")];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: &[String]| {
        walvault(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &env,
            None,
        )
    };

    // The PostgreSQL 15 cluster: two backups and rows around a noted time.
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on");
    a.start(&env);
    a.psql("create table t(i bigint primary key, note text)");
    // A row updated between the full and the incremental, its page's LSN
    // then forged older than the full's start (below).
    a.psql("create table f(i int primary key, v text)");
    a.psql("insert into f select g, 'before' from generate_series(1, 300) g");
    insert(&a, 1, 10);
    ok(
        &walvault(&["backup-push", "--fast"], &a.pg_env(&env), None),
        "backup 1",
    );
    insert(&a, 11, 15);
    ok(
        &walvault(&["backup-push", "--fast"], &a.pg_env(&env), None),
        "backup 2",
    );
    insert(&a, 16, 20);
    std::thread::sleep(Duration::from_millis(50));
    let before_upgrade = now_utc(&a);
    std::thread::sleep(Duration::from_millis(50));
    insert(&a, 21, 30);
    a.flush_archive();
    assert_eq!(a.archiver_failed_count(), 0);
    a.stop();

    // pg_upgrade into a new PostgreSQL 16 cluster.
    let mut b = Cluster::init_with(root.path(), "b", &new_bin);
    let out = pg_command(
        new_bin.join("pg_upgrade").to_str().unwrap(),
        &BTreeMap::new(),
    )
    .current_dir(root.path())
    .args([
        "-U",
        "postgres",
        "-p",
        &free_port().to_string(),
        "-P",
        &free_port().to_string(),
    ])
    .arg("-b")
    .arg(&a.bin)
    .arg("-B")
    .arg(&new_bin)
    .arg("-d")
    .arg(&a.pgdata)
    .arg("-D")
    .arg(&b.pgdata)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "pg_upgrade: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let sysid = |c: &Cluster| {
        let out = pg_command(&format!("{PG_BIN}/pg_controldata"), &BTreeMap::new())
            .arg(&c.pgdata)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with("Database system identifier:"))
            .unwrap_or_else(|| panic!("{text}"))
            .to_string()
    };
    assert_ne!(
        sysid(&a),
        sysid(&b),
        "pg_upgrade gives a new system identifier"
    );

    // Before the upgraded cluster archives: one command.
    b.archive_to_walvault();
    let switch = || {
        let args = [
            "repo-switch",
            "--to",
            &new_url,
            "--pgdata",
            b.pgdata.to_str().unwrap(),
        ];
        ok(&walvault(&args, &env, None), "repo-switch")
    };
    let text = switch();
    assert!(text.contains("PostgreSQL 15) stays as it is"), "{text}");
    assert!(text.contains("PostgreSQL 16)"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        config_text(&new_url),
        "only the repo line changed"
    );
    let again = switch();
    assert!(
        again.starts_with("already switched:")
            && again.contains(&format!("upgraded from {old_url}")),
        "a rerun is harmless: {again}"
    );
    b.start(&env);
    assert_eq!(summary(&b), expected(&[(1, 30)]), "the data came over");
    insert(&b, 31, 40);
    ok(
        &walvault(&["backup-push", "--fast"], &b.pg_env(&env), None),
        "backup of 16",
    );
    insert(&b, 41, 45);
    b.flush_archive();
    assert_eq!(b.archiver_failed_count(), 0, "{}", b.log_tail());

    // The old repository refuses the new cluster's WAL and says where it goes now.
    let seg = b.psql("select last_archived_wal from pg_stat_archiver");
    let seg_path = b.pgdata.join("pg_wal").join(&seg);
    let out = run(&with_old(&["wal-push", seg_path.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("which archives to {new_url} since repo-switch")),
        "{}",
        stderr(&out)
    );
    let listed = ok(&run(&with_old(&["backup-list"])), "old list");
    assert!(
        listed.contains(&format!("SWITCHED to: {new_url}")),
        "{listed}"
    );
    let listed = ok(&walvault(&["backup-list"], &env, None), "new list");
    assert!(
        listed.contains(&format!("upgraded from: {old_url}")),
        "{listed}"
    );
    // A second, different switch is refused; nothing changes.
    let out = run(&with_old(&[
        "repo-switch",
        "--to",
        &format!("{new_url}-again"),
        "--pgdata",
        b.pgdata.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was already switched to"),
        "{}",
        stderr(&out)
    );

    // Retention goes on in the old repository, which still recovers to before the upgrade.
    ok(
        &run(&with_old(&["delete", "--keep-last", "1", "--confirm"])),
        "retention in the old repository",
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&run(&with_old(&["backup-list", "--json"])), "list")).unwrap();
    assert_eq!(json["backups"].as_array().unwrap().len(), 1, "{json}");
    let mut p = Cluster::at(root.path(), "p");
    let mut args = with_old(&[]);
    args.extend(p.recover_args());
    args.extend(["--target-time".to_string(), before_upgrade.clone()]);
    let text = ok(&run(&args), "recover from the old repository");
    assert!(text.contains("server:   PostgreSQL 15 from"), "{text}");
    p.adopt();
    p.wait_promoted(Duration::from_secs(60));
    assert_eq!(
        summary(&p),
        expected(&[(1, 20)]),
        "before the upgrade, exactly"
    );
    p.stop();

    // The new repository recovers the upgraded cluster with 16's binaries.
    b.stop();
    let mut q = Cluster::at(root.path(), "q");
    q.bin = new_bin.clone();
    let mut args = q.recover_args();
    args.extend(["--target".to_string(), "latest".to_string()]);
    let text = ok(&run(&args), "recover from the new repository");
    assert!(
        text.contains(&format!(
            "server:   PostgreSQL 16 from {}",
            new_bin.display()
        )),
        "{text}"
    );
    q.adopt();
    q.wait_promoted(Duration::from_secs(60));
    assert_eq!(summary(&q), expected(&[(1, 45)]));
    q.stop();
}
