//! Retention, Object Lock, verification and status against real PostgreSQL 15
//! and SeaweedFS.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn segno(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap();
    ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) >> 24
}

fn seg_of_key(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    // 16 MiB segments: 256 per log id.
    (name.len() == 24).then(|| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&name[16..], 16).unwrap()
    })
}

/// backup-list --json: (id, start segno, stop segno) of each backup, oldest first.
fn backups(env: &BTreeMap<String, String>) -> Vec<(String, u64, u64, serde_json::Value)> {
    let out = walvault(&["backup-list", "--json"], env, None);
    assert!(out.status.success(), "backup-list: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let stop = segno(b["stop_lsn"].as_str().unwrap());
            (
                b["id"].as_str().unwrap().to_string(),
                segno(b["start_lsn"].as_str().unwrap()),
                stop,
                b.clone(),
            )
        })
        .collect()
}

fn run_ok(args: &[&str], env: &BTreeMap<String, String>) -> String {
    let out = walvault(args, env, None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{args:?}: {}\n{text}", stderr(&out));
    text
}

fn run_fails(args: &[&str], env: &BTreeMap<String, String>) -> String {
    let out = walvault(args, env, None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail: {}\n{text}",
        stderr(&out)
    );
    text
}

/// Tests 1 and 2: "keep 2" leaves exactly the 2 newest plus a permanent backup
/// older than all of them; each still recovers; WAL no kept backup needs is gone,
/// but the history file of a timeline switch older than every backup stays.
#[test]
fn retention_keeps_what_the_policy_promises_and_permanent_backups() {
    let weed = Seaweed::start();
    let mut s = source(|_| weed.walvault_env("ret"));
    s.a.psql("create table marks(i int)");
    s.flush_archive();
    // A recovery promoted with archiving: timeline 2 and its history file,
    // older than every backup below, which all follow it (the first backup,
    // on timeline 1, goes with the policy).
    let b0 = s.backup();
    s.a.stop();
    s.a = s.recover("tl2", &["--archive"]);
    assert_eq!(
        s.a.psql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    s.flush_archive();
    let mut ids = Vec::new();
    for i in 1..=4 {
        s.a.psql(&format!("insert into marks values ({i})"));
        ids.push(s.backup());
        // WAL between backups: what retention must expire (or keep).
        s.a.psql("insert into marks select -1 from generate_series(1, 100)");
        s.flush_archive();
        s.flush_archive();
    }
    run_ok(
        &[
            "backup-mark",
            &ids[0],
            "--permanent",
            "--note",
            "audit 2026",
        ],
        &s.env,
    );
    let list = run_ok(&["backup-list"], &s.env);
    assert!(list.contains("KEEP permanent: audit 2026"), "{list}");

    // No policy: a clear refusal.
    let out = walvault(&["delete"], &s.env, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no retention policy"),
        "{}",
        stderr(&out)
    );

    let wal_before = weed.list("ret/wal/");
    let dry = run_ok(&["delete", "--keep-last", "2"], &s.env);
    assert!(
        dry.contains(&format!("backup {:<17} REMOVE", ids[1])),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("backup {:<17} keep", ids[0])),
        "{dry}"
    );
    assert!(dry.contains("dry run: nothing removed"), "{dry}");
    assert_eq!(
        weed.list("ret/wal/"),
        wal_before,
        "a dry run removes nothing"
    );
    assert_eq!(backups(&s.env).len(), 5);

    let done = run_ok(&["delete", "--keep-last", "2", "--confirm"], &s.env);
    assert!(done.contains("removed "), "{done}");
    let left = backups(&s.env);
    let left_ids: Vec<&str> = left.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(
        left_ids,
        vec![ids[0].as_str(), ids[2].as_str(), ids[3].as_str()]
    );
    for gone in [&b0, &ids[1]] {
        assert!(
            weed.list(&format!("ret/backups/{gone}/")).is_empty(),
            "every object of the removed backup {gone} is gone"
        );
    }

    // WAL: the permanent backup's own range, and everything from the oldest kept
    // non-permanent backup on; nothing else.
    let (_, p_start, p_stop, _) = left[0].clone();
    let keep_from = left[1].1;
    let wal_after: Vec<u64> = weed
        .list("ret/wal/")
        .iter()
        .filter_map(|k| seg_of_key(k))
        .collect();
    let before: Vec<u64> = wal_before.iter().filter_map(|k| seg_of_key(k)).collect();
    for n in &before {
        let needed = (p_start..=p_stop).contains(n) || *n >= keep_from;
        assert_eq!(wal_after.contains(n), needed, "segment {n}: kept {}, needed {needed} (permanent {p_start}..={p_stop}, from {keep_from})", wal_after.contains(n));
    }
    assert!(
        before.len() > wal_after.len() + 4,
        "old WAL was expired: {} → {}",
        before.len(),
        wal_after.len()
    );
    let histories: Vec<&String> = wal_before
        .iter()
        .filter(|k| k.ends_with(".history"))
        .collect();
    assert!(
        histories.iter().any(|k| k.ends_with("00000002.history")),
        "the timeline switch is archived: {wal_before:?}"
    );
    let wal_left = weed.list("ret/wal/");
    for h in histories {
        assert!(wal_left.contains(h), "history file {h} removed");
    }

    // The archive is still whole from the oldest kept backup on.
    run_ok(&["wal-verify"], &s.env);

    // Every remaining backup recovers, to exactly its own contents: marks 1 to
    // n, and the 100 filler rows written after each earlier backup.
    for (n, id) in [(1, &ids[0]), (3, &ids[2]), (4, &ids[3])] {
        let mut b = s.recover(&format!("r{n}"), &["--backup", id, "--target", "immediate"]);
        let marks: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        assert_eq!(
            b.psql("select string_agg(i::text, ',' order by i) from marks where i > 0"),
            marks.join(","),
            "backup {id}"
        );
        assert_eq!(
            b.psql("select count(*) from marks"),
            (n + (n - 1) * 100).to_string(),
            "backup {id}"
        );
        b.stop();
    }

    // Unmarked, the old backup goes on the next run.
    run_ok(&["backup-mark", &ids[0], "--unmark"], &s.env);
    run_ok(&["delete", "--keep-last", "2", "--confirm"], &s.env);
    let left: Vec<String> = backups(&s.env).into_iter().map(|b| b.0).collect();
    assert_eq!(left, vec![ids[2].clone(), ids[3].clone()]);
}

/// Test 3: on an Object Lock bucket, pushed objects carry retention, nothing can
/// remove them, and retention reports them as locked and carries on.
#[test]
fn object_lock_protects_the_archive_and_retention_skips_locked_objects() {
    let weed = Seaweed::start();
    weed.create_locked_bucket("locked");
    let mut env = weed.walvault_env_in("locked", "db");
    env.insert("WALVAULT_S3_OBJECT_LOCK_MODE".into(), "GOVERNANCE".into());
    env.insert("WALVAULT_S3_OBJECT_LOCK_DAYS".into(), "1".into());
    let s = source(|_| env.clone());
    s.a.psql("create table t(i int); insert into t values (1)");
    s.flush_archive();
    s.flush_archive();
    let b1 = s.backup();
    s.flush_archive();
    let b2 = s.backup();
    s.flush_archive();

    // Every object written carries the retention.
    let keys = weed.s3(|c| async move {
        let out = c
            .list_objects_v2()
            .bucket("locked")
            .prefix("db/")
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect::<Vec<_>>()
    });
    assert!(
        keys.iter().any(|k| k.contains("/wal/"))
            && keys.iter().any(|k| k.ends_with("manifest.json"))
    );
    for key in &keys {
        let k = key.clone();
        let (mode, until) = weed.s3(|c| async move {
            let h = c
                .head_object()
                .bucket("locked")
                .key(k)
                .send()
                .await
                .unwrap();
            (
                h.object_lock_mode().map(|m| m.as_str().to_string()),
                h.object_lock_retain_until_date().map(|t| t.secs()),
            )
        });
        assert_eq!(mode.as_deref(), Some("GOVERNANCE"), "{key}");
        let now = chrono::Utc::now().timestamp();
        assert!(
            until.unwrap() > now + 23 * 3600,
            "{key}: retained for a day"
        );
    }

    // A stolen credential cannot erase a locked version.
    let manifest = format!("db/backups/{b1}/manifest.json");
    let denied = weed.s3(|c| async move {
        let v = c
            .list_object_versions()
            .bucket("locked")
            .prefix(manifest.clone())
            .send()
            .await
            .unwrap();
        let id = v.versions()[0].version_id().unwrap().to_string();
        c.delete_object()
            .bucket("locked")
            .key(manifest)
            .version_id(id)
            .send()
            .await
            .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
    });
    assert!(
        denied.is_err_and(|e| e.contains("AccessDenied")),
        "a locked version cannot be deleted"
    );

    // Retention: b1 is locked, so it stays whole; WAL before it is locked too and skipped.
    let out = run_ok(&["delete", "--keep-last", "1", "--confirm"], &s.env);
    assert!(out.contains(&format!("backup {b1:<17} keep")), "{out}");
    assert!(out.contains("under Object Lock until"), "{out}");
    assert!(
        out.contains("still locked against deletion (Object Lock"),
        "locked WAL reported: {out}"
    );
    let left: Vec<String> = backups(&s.env).into_iter().map(|b| b.0).collect();
    assert_eq!(left, vec![b1, b2]);
    run_ok(&["wal-verify"], &s.env);
}

fn identity(root: &Path) -> (String, String) {
    let idfile = root.join("identity.txt");
    let out = walvault(
        &["keygen", "--output", idfile.to_str().unwrap()],
        &base_env(),
        None,
    );
    assert!(out.status.success(), "keygen: {}", stderr(&out));
    (
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
        idfile.display().to_string(),
    )
}

/// Test 4: wal-verify names a segment deleted by hand; verify names a corrupted
/// and a missing part, with and without the private key.
#[test]
fn verify_and_wal_verify_name_what_is_broken() {
    let weed = Seaweed::start();
    let keydir = pg_tempdir();
    let (recipient, idfile) = identity(keydir.path());
    let s = source(|_| {
        let mut e = weed.walvault_env("ver");
        e.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
        e.insert("WALVAULT_ENCRYPTION_IDENTITY_FILE".into(), idfile);
        // Several parts from a small database.
        e.insert("WALVAULT_BACKUP_PART_SIZE_MB".into(), "4".into());
        e
    });
    let mut keyless = s.env.clone();
    keyless.remove("WALVAULT_ENCRYPTION_IDENTITY_FILE");
    s.a.pgbench(&["-i", "-s", "2", "-q"]);
    let id = s.backup();
    for _ in 0..4 {
        s.a.pgbench(&["-t", "100"]);
        s.flush_archive();
    }

    let ok = run_ok(&["verify"], &s.env);
    assert!(
        ok.contains("plaintext sha256 of every object and every file"),
        "{ok}"
    );
    assert!(
        ok.contains(&format!("backup {id}: OK")) && ok.contains(" files)"),
        "{ok}"
    );
    let ok = run_ok(&["verify", "--wal"], &keyless);
    assert!(ok.contains("stored bytes only"), "{ok}");
    assert!(ok.contains("all WAL: OK"), "{ok}");
    run_ok(&["wal-verify"], &s.env);

    // A segment after the backup, removed by hand.
    let (_, _, stop, manifest) = backups(&s.env).remove(0);
    let wal: Vec<String> = weed
        .list("ver/wal/")
        .into_iter()
        .filter(|k| seg_of_key(k).is_some_and(|n| n > stop + 1))
        .collect();
    assert!(wal.len() >= 2, "{wal:?}");
    let victim = wal[0].clone();
    let name = victim.rsplit('/').next().unwrap().to_string();
    weed.delete(&victim);
    let mut patient = s.env.clone();
    patient.insert("WALVAULT_VERIFY_PENDING_SECONDS".into(), "3600".into());
    let pending = run_ok(&["wal-verify"], &patient);
    assert!(
        pending.contains(&name) && pending.contains("probably still being pushed"),
        "{pending}"
    );
    let mut strict = s.env.clone();
    strict.insert("WALVAULT_VERIFY_PENDING_SECONDS".into(), "0".into());
    let lost = run_fails(&["wal-verify"], &strict);
    assert!(lost.contains(&format!("GAP {name} (LOST)")), "{lost}");
    assert!(lost.contains("recoverable window: BROKEN"), "{lost}");
    let json = walvault(&["wal-verify", "--json"], &strict, None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["gaps"][0]["first"], name.as_str());
    assert_eq!(v["window_broken"], true);

    // A flipped byte in one part, and another part gone.
    let parts: Vec<String> = manifest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap().to_string())
        .collect();
    assert!(parts.len() >= 3, "{parts:?}");
    let damaged = format!("ver/{}", parts[0]);
    let mut bytes = weed.get(&damaged);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    weed.put(&damaged, bytes);
    weed.delete(&format!("ver/{}", parts[1]));
    for env in [&s.env, &keyless] {
        let bad = run_fails(&["verify", "--backup", &id], env);
        assert!(bad.contains(&format!("backup {id}: 2 PROBLEM(S)")), "{bad}");
        assert!(
            bad.contains(&format!("DAMAGED s3://{BUCKET}/{damaged}")),
            "{bad}"
        );
        assert!(
            bad.contains(&format!("MISSING s3://{BUCKET}/ver/{}", parts[1])),
            "{bad}"
        );
    }
    let out = walvault(&["verify", "--backup", "19990101T000000Z"], &s.env, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

fn metrics(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name_labels, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let name = name_labels.split('{').next().unwrap();
        assert!(name_labels.ends_with("\"}"), "labels in {line}");
        out.insert(
            name.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value {line}")),
        );
    }
    out
}

/// Test 5: the textfile parses, and its backlog figures move when S3 is down.
#[test]
fn status_textfile_shows_the_backlog_when_s3_is_down() {
    let mut weed = Seaweed::start();
    let s = source(|_| weed.walvault_env("st"));
    s.a.psql("create table t(i int)");
    s.flush_archive();
    s.backup();
    // The backup's last files (its stop segment, the .backup file) may still
    // be on their way to the archiver: the figures below are of an idle one.
    wait_for("the backup's WAL archived", Duration::from_secs(60), || {
        ready_files(&s.a.pgdata).is_empty()
    });
    let env = s.a.pg_env(&s.env);
    let prom = s.root.path().join("walvault.prom");
    let p = prom.to_str().unwrap();
    run_ok(&["status", "--prometheus", p], &env);
    let m = metrics(&prom);
    assert_eq!(m["walvault_repository_up"], 1.0);
    assert_eq!(m["walvault_postgres_up"], 1.0);
    assert_eq!(m["walvault_archive_ready_count"], 0.0);
    assert_eq!(m["walvault_backups"], 1.0);
    assert_eq!(m["walvault_wal_gap"], 0.0);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - m["walvault_last_backup_time_seconds"]).abs() < 300.0);
    assert!(m["walvault_window_end_time_seconds"] >= m["walvault_window_start_time_seconds"]);
    let human = run_ok(&["status"], &env);
    assert!(
        human.contains("last backup") && human.contains("backlog        0 file(s)"),
        "{human}"
    );

    weed.stop();
    for i in 0..3 {
        s.a.psql(&format!("insert into t values ({i})"));
        s.a.switch_wal();
    }
    wait_for("a failed push", Duration::from_secs(60), || {
        s.a.archiver_failed_count() > 0
    });
    wait_for("three segments waiting", Duration::from_secs(60), || {
        s.a.psql("select count(*) from pg_ls_archive_statusdir() where name like '%.ready'")
            .parse::<u32>()
            .unwrap()
            >= 3
    });
    let out = walvault(&["status", "--prometheus", p], &env, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "repository down: {}",
        stderr(&out)
    );
    let m = metrics(&prom);
    assert_eq!(m["walvault_repository_up"], 0.0);
    assert_eq!(m["walvault_postgres_up"], 1.0);
    assert!(m["walvault_archive_ready_count"] >= 3.0, "{m:?}");
    assert!(
        m["walvault_archive_oldest_ready_age_seconds"] > 0.0,
        "{m:?}"
    );
    assert!(m["walvault_archiver_failed_count"] > 0.0);
    assert!(m.contains_key("walvault_archiver_last_failed_time_seconds"));
    assert!(
        !m.contains_key("walvault_backups"),
        "unknown while S3 is down, not 0"
    );
    let json = walvault(&["status", "--json"], &env, None);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["repository_error"].as_str().unwrap().contains("S3"),
        "{v}"
    );

    weed.restart();
    // A new .ready file wakes the archiver, which otherwise sleeps a minute after
    // three failures.
    s.a.psql("insert into t values (9)");
    s.a.switch_wal();
    wait_for("backlog drained", Duration::from_secs(120), || {
        s.a.psql("select count(*) from pg_ls_archive_statusdir() where name like '%.ready'") == "0"
    });
    run_ok(&["status", "--prometheus", p], &env);
    let m = metrics(&prom);
    assert_eq!(m["walvault_repository_up"], 1.0);
    assert_eq!(m["walvault_archive_ready_count"], 0.0);
}

/// The alert rules use only metrics that `status --prometheus` writes.
#[test]
fn alert_rules_use_real_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/prometheus/walvault-alerts.yml"
    ))
    .unwrap();
    let mut used = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("walvault_") {
            used += 1;
            assert!(
                walvault::status::METRICS.iter().any(|(n, _)| *n == word),
                "the alert rules use {word}, which status does not write"
            );
        }
    }
    assert!(used >= 5, "the rules use the metrics");
}

/// Lifecycle classes (the tag the bucket's rules act on): daily data standard,
/// the repository identity and history files kept, a permanent backup moved
/// with exactly its WAL, and back on unmark; drill reports permanent.
#[test]
fn lifecycle_classes_follow_backup_marks() {
    let mut s3 = Seaweed::start();
    let src = source(|_| {
        let mut e = s3.walvault_env("classes");
        e.insert("WALVAULT_S3_CLASS_TAGS".into(), "true".into());
        e
    });
    src.a
        .psql("create table t (i int); insert into t values (1)");
    let id = src.backup();
    src.a.psql("insert into t values (2)");
    src.flush_archive();
    let (_, start, stop, _) = backups(&src.env).pop().unwrap();
    let keys = s3.list("classes/");
    let class = |k: &str| s3.class_tag(k);
    assert_eq!(class("classes/walvault.json").as_deref(), Some("kept"));
    let parts: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("classes/backups/{id}/")))
        .collect();
    assert!(parts.len() >= 4, "{keys:?}");
    let wal: Vec<&String> = keys.iter().filter(|k| k.contains("/wal/")).collect();
    for k in parts.iter().chain(wal.iter()) {
        assert_eq!(class(k).as_deref(), Some("standard"), "{k}");
    }

    let out = run_ok(
        &["backup-mark", &id, "--permanent", "--note", "audit"],
        &src.env,
    );
    assert!(out.contains("walvault-class=permanent"), "{out}");
    // The backup's own objects and the WAL from its start to its stop; nothing else.
    let own_wal = |k: &str| {
        seg_of_key(k).is_some_and(|s| s >= start && s <= stop)
            || (k.ends_with(".backup")
                && k.rsplit('/')
                    .next()
                    .and_then(|n| seg_of_key(&n[..24]))
                    .is_some_and(|s| s >= start && s <= stop))
    };
    for k in s3.list("classes/") {
        let want = if k.starts_with(&format!("classes/backups/{id}/")) || own_wal(&k) {
            "permanent"
        } else if k.ends_with("walvault.json") {
            "kept"
        } else {
            "standard"
        };
        assert_eq!(class(&k).as_deref(), Some(want), "{k}");
    }
    assert!(
        wal.iter().any(|k| !own_wal(k)),
        "a segment after the backup stays standard: {wal:?}"
    );
    run_ok(
        &["backup-mark", &id, "--keep-until", "2099-12-31"],
        &src.env,
    );
    assert_eq!(
        class(&format!("classes/backups/{id}/manifest.json")).as_deref(),
        Some("kept")
    );
    run_ok(&["backup-mark", &id, "--unmark"], &src.env);
    for k in s3.list("classes/") {
        if !k.ends_with("walvault.json") {
            assert_eq!(class(&k).as_deref(), Some("standard"), "{k}");
        }
    }

    // A permanent incremental takes the backup it builds on into its class.
    let out = walvault(
        &["backup-push", "--fast", "--incremental"],
        &src.a.pg_env(&src.env),
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let incr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run_ok(&["backup-mark", &incr, "--permanent"], &src.env);
    assert!(out.contains(&format!("builds on {id}")), "{out}");
    for who in [&id, &incr] {
        assert_eq!(
            class(&format!("classes/backups/{who}/manifest.json")).as_deref(),
            Some("permanent"),
            "{who}"
        );
    }
    run_ok(&["backup-mark", &incr, "--unmark"], &src.env);
    run_ok(&["backup-mark", &id, "--unmark"], &src.env);

    // Drill reports are audit evidence: the long class.
    let reports = src.root.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    chown_pg(&reports);
    let scratch = src.root.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_pg(&scratch);
    run_ok(
        &[
            "drill",
            "--no-amcheck",
            "--report-dir",
            reports.to_str().unwrap(),
            "--scratch-dir",
            scratch.to_str().unwrap(),
        ],
        &src.env,
    );
    let drills: Vec<String> = s3.list("classes/drills/");
    assert_eq!(drills.len(), 2, "{drills:?}");
    for k in &drills {
        assert_eq!(class(k).as_deref(), Some("permanent"), "{k}");
    }
    s3.stop();
}
