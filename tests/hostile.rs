//! What a damaged or hostile repository, a failing archiver, a second backup
//! at once, a panic or a closed pipe do to walvault: each ends in one clear
//! line and the right exit status, and nothing wrong reaches PostgreSQL.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The error walvault reports: exactly one line (logs before it aside).
fn one_line(out: &std::process::Output) -> String {
    let e = stderr(out);
    let errors: Vec<&str> = e.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {e}");
    errors[0].to_string()
}

/// An empty repository directory the postgres user owns.
fn empty_repo(root: &std::path::Path) -> BTreeMap<String, String> {
    fs_repo(root)
}

#[test]
fn a_panic_in_wal_fetch_stops_recovery_and_a_closed_pipe_is_quiet() {
    let root = pg_tempdir();
    let env = empty_repo(root.path());
    // PostgreSQL reads 101 (a Rust panic's status) as "absent" and would end
    // recovery early: wal-fetch must exit above 125 on any panic.
    let mut panicky = env.clone();
    panicky.insert("_WALVAULT_PANIC_FOR_TESTS".into(), "wal-fetch".into());
    let dest = root.path().join("RECOVERYXLOG");
    let out = walvault(
        &[
            "wal-fetch",
            "000000010000000000000003",
            dest.to_str().unwrap(),
        ],
        &panicky,
        None,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(stderr(&out).contains("internal error"), "{}", stderr(&out));
    assert!(!dest.exists());

    // `walvault status | head -0`: the reader is gone before anything is written.
    let mut c = pg_command(walvault_bin().to_str().unwrap(), &env);
    let mut child = c
        .arg("status")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_path_without_a_repository_is_named_not_listed_as_empty() {
    let root = pg_tempdir();
    let env = empty_repo(root.path());
    for args in [&["backup-list"][..], &["status"][..]] {
        let out = walvault(args, &env, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(
            text.contains("holds no walvault repository"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn a_decompression_bomb_under_a_history_name_is_refused() {
    let root = pg_tempdir();
    let env = empty_repo(root.path());
    let zeros = vec![0u8; 64 << 20];
    let mut stored = Vec::new();
    walvault::codec::Codec::new(3, vec![], None)
        .encode(&mut &zeros[..], &mut stored)
        .unwrap();
    let wal = root.path().join("repo/wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::write(wal.join("00000009.history"), &stored).unwrap();
    chown_pg(&root.path().join("repo"));
    let dest = root.path().join("got.history");
    let out = walvault(
        &["wal-fetch", "00000009.history", dest.to_str().unwrap()],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("decodes to more than"),
        "{}",
        stderr(&out)
    );
    assert!(!dest.exists());
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("walvault-fetch"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn damaged_objects_concurrent_backups_and_a_failing_archiver() {
    let mut s = source(fs_repo);
    s.a.psql("create table t(i int primary key)");
    s.a.psql("insert into t select generate_series(1, 1000)");
    s.a.pgbench(&["-i", "-s", "2", "-q"]);

    // Two backup-push at once: one runs, the other is refused in one line.
    let env = s.a.pg_env(&s.env);
    let spawn = || {
        pg_command(walvault_bin().to_str().unwrap(), &env)
            .args(["backup-push", "--fast"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The second starts once the first holds the lock (it logs "starting" then).
    let mut x = spawn();
    let mut first_err = String::new();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(x.stderr.as_mut().unwrap());
        while lines.read_line(&mut first_err).unwrap() > 0 && !first_err.contains(": starting (") {}
    }
    let y = spawn();
    let second = y.wait_with_output().unwrap();
    let mut first = x.wait_with_output().unwrap();
    first.stderr = [first_err.into_bytes(), first.stderr].concat();
    let outs = [first, second];
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "{:?}",
        outs.iter().map(stderr).collect::<Vec<_>>()
    );
    assert!(
        one_line(lost[0]).contains("another walvault backup-push is running"),
        "{}",
        stderr(lost[0])
    );
    let bk1 = String::from_utf8_lossy(&won[0].stdout).trim().to_string();
    s.a.psql("insert into t select generate_series(1001, 1100)");
    let bk2 = s.backup();
    s.a.psql("insert into t select generate_series(1101, 1200)");
    s.flush_archive();

    // One damaged manifest: named by backup-list, the other backup recovers.
    let repo = s.root.path().join("repo");
    std::fs::write(
        repo.join(format!("backups/{bk1}/manifest.json")),
        b"{ not json",
    )
    .unwrap();
    let out = walvault(&["backup-list"], &s.env, None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains(&format!("DAMAGED: backup {bk1}")), "{text}");
    let r = s.recover("by_id", &["--backup", &bk2, "--target", "immediate"]);
    assert_eq!(r.psql("select count(*) from t"), "1100");
    drop(r);

    // A segment stored under another segment's name: wal-fetch refuses it as
    // fatal, naming both, and a recovery through it fails instead of ending early.
    let mut segs: Vec<String> = std::fs::read_dir(repo.join("wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| is_segment(n))
        .collect();
    segs.sort();
    let (last, before) = (segs[segs.len() - 1].clone(), segs[segs.len() - 2].clone());
    std::fs::copy(repo.join("wal").join(&before), repo.join("wal").join(&last)).unwrap();
    let dest = s.root.path().join("fetched-wrong");
    let out = walvault(&["wal-fetch", &last, dest.to_str().unwrap()], &s.env, None);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    let e = one_line(&out);
    assert!(e.contains(&last) && e.contains(&before), "{e}");
    assert!(!dest.exists());
    let mut w = Cluster::at(s.root.path(), "through_wrong");
    let mut args = w.recover_args();
    args.extend(["--target", "latest"].map(String::from));
    let out = walvault(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &s.env,
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "recovery through a wrong segment must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    if walvault::pg::postmaster::running_pid(&w.pgdata).is_some() {
        w.adopt();
        w.stop();
    }

    // The archiver fails: backup-push gives up after its bounded wait, with
    // what PostgreSQL says of its archiver, instead of waiting for ever.
    s.a.psql("alter system set archive_command = 'false'");
    s.a.psql("select pg_reload_conf()");
    let mut env = s.a.pg_env(&s.env);
    env.insert("WALVAULT_BACKUP_WAL_WAIT_SECONDS".into(), "5".into());
    let t = Instant::now();
    let out = walvault(&["backup-push", "--fast"], &env, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(90), "{:?}", t.elapsed());
    let e = one_line(&out);
    assert!(
        e.contains("within 5 s")
            && e.contains("failed attempts")
            && e.contains("archive_command 'false'"),
        "{e}"
    );
    s.a.psql("alter system reset archive_command");
    s.a.psql("select pg_reload_conf()");
    s.flush_archive();
    s.a.stop();
}

#[test]
fn s3_errors_are_one_readable_line() {
    let mut weed = Seaweed::start();
    let mut env = weed.walvault_env("errors");
    env.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let out = walvault(&["backup-list"], &env, None);
    assert_eq!(out.status.code(), Some(1));
    let e = one_line(&out);
    assert!(
        e.contains("S3 error") && e.contains("SignatureDoesNotMatch"),
        "{e}"
    );
    assert!(e.contains("check the credentials"), "{e}");
    assert!(e.len() < 600, "{} bytes: {e}", e.len());

    let mut env = weed.walvault_env("errors");
    env.insert(
        "WALVAULT_REPO".into(),
        format!("s3://no-such-bucket-{}/x", std::process::id()),
    );
    let out = walvault(&["backup-list"], &env, None);
    let e = one_line(&out);
    assert!(e.contains("NoSuchBucket") && e.len() < 600, "{e}");

    // A dead endpoint: wal-fetch must not answer "absent".
    weed.stop();
    let env = weed.walvault_env("errors");
    let root = pg_tempdir();
    let dest = root.path().join("x");
    let out = walvault(
        &[
            "wal-fetch",
            "000000010000000000000001",
            dest.to_str().unwrap(),
        ],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    let e = one_line(&out);
    assert!(e.contains("S3 request failed") && e.len() < 800, "{e}");
}
