//! The WAL archive loop against real PostgreSQL 15 and a real S3 server:
//! archive_command → repository → restore_command, and its failure modes.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const FIRST: &str = "000000010000000000000001";

fn wal_names_in_dir(repo: &Path) -> BTreeSet<String> {
    std::fs::read_dir(repo.join("wal"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn wal_names_in_bucket(weed: &Seaweed, prefix: &str) -> BTreeSet<String> {
    weed.list(&format!("{prefix}/wal/"))
        .into_iter()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// Test 1 and 2 of the issue: archive under pgbench load, every segment lands in
/// the repository with no archiver failure; a cluster made with
/// `pg_basebackup -X none` recovers from the repository alone to identical data.
fn archive_and_recover(
    root: &Path,
    env: &BTreeMap<String, String>,
    stored: &dyn Fn() -> BTreeSet<String>,
) {
    let mut a = Cluster::init(root, "a");
    a.archive_to_walvault();
    a.conf("wal_keep_size = 2048");
    a.start(env);
    a.pgbench(&["-i", "-s", "2", "-q"]);

    let b = Cluster::at(root, "b");
    a.basebackup(&b.pgdata);
    a.pgbench(&["-n", "-c", "2", "-j", "2", "-t", "1500"]);
    a.psql("create table marker(x int); insert into marker values (42)");
    let expected = a.pgbench_checksum();
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(180));
    assert_eq!(a.archiver_failed_count(), 0, "{}", a.log_tail());

    let have = stored();
    for seg in segment_range(FIRST, &last) {
        assert!(
            have.contains(&seg),
            "segment {seg} missing from the repository"
        );
    }
    assert!(
        have.iter().any(|n| n.ends_with(".backup")),
        "the backup history file of pg_basebackup was archived: {have:?}"
    );
    let ready: Vec<_> = std::fs::read_dir(a.pgdata.join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".ready"))
        .collect();
    assert!(ready.is_empty(), "left unarchived: {ready:?}");
    a.stop();

    // The copy recovers from the repository alone (its pg_wal is empty), then
    // promotes and archives its new timeline's history into the same repository.
    let mut b = b;
    std::fs::write(b.pgdata.join("recovery.signal"), "").unwrap();
    chown_pg(&b.pgdata);
    b.start(env);
    b.wait_promoted(Duration::from_secs(300));
    assert_eq!(
        b.pgbench_checksum(),
        expected,
        "restored data differs from the source"
    );
    assert_eq!(b.psql("select x from marker"), "42");
    assert_eq!(
        b.psql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    let log = std::fs::read_to_string(b.log_path()).unwrap();
    assert!(
        log.contains("restored log file"),
        "WAL came from the repository"
    );
    wait_for("00000002.history archived", Duration::from_secs(60), || {
        stored().contains("00000002.history")
    });
    b.stop();
}

#[test]
fn archive_and_recover_local_directory() {
    let root = pg_tempdir();
    let repo = root.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    chown_pg(&repo);
    archive_and_recover(root.path(), &fs_env(&repo), &|| wal_names_in_dir(&repo));
    assert!(repo.join("walvault.json").exists());
}

#[test]
fn archive_and_recover_s3() {
    let weed = Seaweed::start();
    let root = pg_tempdir();
    let env = weed.walvault_env("loop");
    archive_and_recover(root.path(), &env, &|| wal_names_in_bucket(&weed, "loop"));
    assert!(weed.list("loop/walvault.json").len() == 1);
}

/// Test 3: an encrypted repository holds no readable WAL; fetching needs the identity.
#[test]
fn encrypted_repository() {
    let root = pg_tempdir();
    let repo = root.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    chown_pg(&repo);
    let idfile = root.path().join("identity.txt");
    let out = walvault(
        &["keygen", "--output", idfile.to_str().unwrap()],
        &base_env(),
        None,
    );
    assert!(out.status.success(), "keygen: {}", stderr(&out));
    let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let secret = std::fs::read_to_string(&idfile).unwrap();
    let again = walvault(
        &["keygen", "--output", idfile.to_str().unwrap()],
        &base_env(),
        None,
    );
    assert!(!again.status.success() && stderr(&again).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&idfile).unwrap(), secret);

    let mut env = fs_env(&repo);
    env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("wal_keep_size = 1024");
    a.start(&env);
    a.pgbench(&["-i", "-s", "1", "-q"]);
    let seg = a.switch_wal();
    a.wait_archived(&seg, Duration::from_secs(120));
    let original = std::fs::read(a.pgdata.join("pg_wal").join(&seg)).unwrap();
    let stored = std::fs::read(repo.join("wal").join(&seg)).unwrap();
    let body = &stored[16..stored.len() - 80];
    assert!(body.starts_with(b"age-encryption.org/v1"));
    assert!(
        !body.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]),
        "no zstd frame in clear"
    );
    assert!(
        !body.windows(16).any(|w| w == &original[8..24]),
        "no WAL header in clear"
    );

    let dest = root.path().join("fetched");
    std::fs::create_dir(&dest).unwrap();
    chown_pg(&dest);
    let target = dest.join(&seg);
    let t = target.to_str().unwrap();
    // Without the identity: fatal (not "absent"), says what to do, writes nothing.
    let out = walvault(&["wal-fetch", &seg, t], &env, None);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(stderr(&out).contains("identity_file"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        0,
        "nothing written"
    );
    // A wrong identity: fatal, named.
    let other = root.path().join("other-identity.txt");
    assert!(walvault(
        &["keygen", "-o", other.to_str().unwrap()],
        &base_env(),
        None
    )
    .status
    .success());
    let mut wrong = env.clone();
    wrong.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        other.display().to_string(),
    );
    let out = walvault(&["wal-fetch", &seg, t], &wrong, None);
    assert_eq!(out.status.code(), Some(128));
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
    // With it: the exact bytes.
    env.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        idfile.display().to_string(),
    );
    let out = walvault(&["wal-fetch", &seg, t], &env, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&target).unwrap() == original,
        "restored segment differs"
    );
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        1,
        "no temporary file left"
    );

    // A backup of the encrypted repository, restored with the identity and
    // started: the same data.
    let mut said = vec![out];
    let out = walvault(&["backup-push", "--fast"], &a.pg_env(&env), None);
    assert!(out.status.success(), "backup-push: {}", stderr(&out));
    said.push(out);
    a.pgbench(&["-n", "-t", "200"]);
    let bank = a.pgbench_checksum();
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(120));
    let mut b = Cluster::at(root.path(), "b");
    let out = walvault(
        &b.recover_args()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &env,
        None,
    );
    assert!(
        out.status.success(),
        "recover --start with the identity: {}",
        stderr(&out)
    );
    said.push(out);
    b.adopt();
    assert_eq!(b.pgbench_checksum(), bank, "every transaction back");
    b.stop();
    a.stop();

    // The identity's secret appears nowhere: not in either server's log, the
    // recovery's log, or anything walvault printed.
    let key = secret
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a secret key line")
        .trim();
    let mut texts = vec![
        std::fs::read_to_string(a.log_path()).unwrap(),
        // The restored server's log (walvault recover --start writes it there).
        std::fs::read_to_string(b.pgdata.join("walvault-recover.log")).unwrap(),
    ];
    for o in &said {
        texts.push(String::from_utf8_lossy(&o.stdout).into_owned());
        texts.push(stderr(o));
    }
    assert!(
        texts[0].len() > 1000 && texts[1].contains("redo starts at"),
        "the logs searched are there"
    );
    for t in &texts {
        assert!(!t.contains(key), "the secret key was written out");
        // Its body alone, in case a prefix was cut or re-cased.
        assert!(!t.to_ascii_uppercase().contains(&key[15..]));
    }
}

/// Test 4: S3 outage while archiving, re-pushes, refusals, and fetch failures
/// that must not look like "absent".
#[test]
fn s3_faults_and_refusals() {
    let mut weed = Seaweed::start();
    let root = pg_tempdir();
    let env = weed.walvault_env("faults");
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("wal_keep_size = 2048");
    a.start(&env);
    a.pgbench(&["-i", "-s", "1", "-q"]);
    let before = a.switch_wal();
    a.wait_archived(&before, Duration::from_secs(120));
    assert_eq!(a.archiver_failed_count(), 0);

    // S3 down: pushes fail, PostgreSQL keeps the .ready files.
    weed.stop();
    a.pgbench(&["-n", "-t", "300"]);
    let s1 = a.switch_wal();
    a.psql("create table t(x int); insert into t select generate_series(1, 10000)");
    let s2 = a.switch_wal();
    wait_for("archive failures", Duration::from_secs(60), || {
        a.archiver_failed_count() > 0
    });
    let status = a.pgdata.join("pg_wal/archive_status");
    assert!(
        status.join(format!("{s2}.ready")).exists(),
        "PostgreSQL keeps {s2} for later"
    );
    let log = a.log_tail();
    assert!(
        log.contains("walvault wal-push: error")
            && log.contains("s3://walvault-test/faults/")
            && log.contains("Connection refused"),
        "the server log says why: {log}"
    );

    // S3 back: the backlog drains on its own and nothing is missing.
    weed.restart();
    a.psql("insert into t values (1)");
    let s3 = a.switch_wal();
    a.wait_archived(&s3, Duration::from_secs(180));
    let have = wal_names_in_bucket(&weed, "faults");
    for seg in segment_range(FIRST, &s3) {
        assert!(have.contains(&seg), "{seg} lost after the outage");
    }
    assert!(have.contains(&s1) && have.contains(&s2));

    let wal = |n: &str| format!("pg_wal/{n}");
    let pgdata = a.pgdata.clone();
    let push = |path: &str, cwd: &Path| walvault(&["wal-push", path], &env, Some(cwd));

    // Re-push of identical content: success.
    let out = push(&wal(&s1), &pgdata);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("identical"), "{}", stderr(&out));

    // Re-push of different content under the same name: refused, stored copy kept.
    let key = format!("faults/wal/{s1}");
    let stored_before = weed.get(&key);
    let alt = root.path().join("alt");
    std::fs::create_dir_all(alt.join("pg_wal")).unwrap();
    let mut changed = std::fs::read(pgdata.join(wal(&s1))).unwrap();
    changed[100_000] ^= 0xff;
    std::fs::write(alt.join(wal(&s1)), &changed).unwrap();
    chown_pg(&alt);
    let out = push(&wal(&s1), &alt);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("DIFFERENT content"),
        "{}",
        stderr(&out)
    );
    assert!(
        weed.get(&key) == stored_before,
        "the archived copy was not touched"
    );

    // Not WAL at all: refused with the reason.
    let junk = alt.join("pg_wal/0000000100000000000000AA");
    std::fs::write(&junk, vec![0x5a; 16 << 20]).unwrap();
    std::fs::write(alt.join("pg_wal/notes.txt"), "hello").unwrap();
    chown_pg(&alt);
    let out = push("pg_wal/0000000100000000000000AA", &alt);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("page magic"), "{}", stderr(&out));
    let out = push("pg_wal/notes.txt", &alt);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a WAL file name"),
        "{}",
        stderr(&out)
    );
    // A segment renamed: its page address gives it away.
    std::fs::copy(
        pgdata.join(wal(&s1)),
        alt.join("pg_wal/0000000100000000000000AB"),
    )
    .unwrap();
    chown_pg(&alt);
    let out = push("pg_wal/0000000100000000000000AB", &alt);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("page address"), "{}", stderr(&out));

    // A segment of another cluster: refused by system identifier, and the
    // stored segment of that name keeps its bytes.
    let first_key = format!("faults/wal/{FIRST}");
    let (first_before, listed_before) = (weed.get(&first_key), weed.list("faults/wal/"));
    assert!(!first_before.is_empty());
    let other = Cluster::init(root.path(), "other");
    let out = push(&wal(FIRST), &other.pgdata);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("system identifier"),
        "{}",
        stderr(&out)
    );
    assert!(
        weed.get(&first_key) == first_before,
        "the stored {FIRST} was not touched"
    );
    assert_eq!(weed.list("faults/wal/"), listed_before, "nothing written");

    // .partial files are archived and fetched like segments.
    std::fs::copy(
        pgdata.join(wal(&s3)),
        alt.join(format!("pg_wal/{s3}.partial")),
    )
    .unwrap();
    chown_pg(&alt);
    let out = push(&format!("pg_wal/{s3}.partial"), &alt);
    assert!(out.status.success(), "{}", stderr(&out));

    let fetch_dir = root.path().join("fetch");
    std::fs::create_dir(&fetch_dir).unwrap();
    chown_pg(&fetch_dir);
    let dest = fetch_dir.join("RECOVERYXLOG");
    let d = dest.to_str().unwrap();
    let fetch =
        |name: &str, env: &BTreeMap<String, String>| walvault(&["wal-fetch", name, d], env, None);

    let out = fetch(&format!("{s3}.partial"), &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(pgdata.join(wal(&s3))).unwrap());

    // Into a data directory's pg_wal, the segment is checked against that
    // directory's own pg_control (as PostgreSQL checks it), not the
    // repository's identity: another cluster asking gets a fatal refusal,
    // naming both identifiers, and no file.
    let ctl = std::process::Command::new(format!("{PG_BIN}/pg_controldata"))
        .arg(&other.pgdata)
        .output()
        .unwrap();
    let other_sysid = String::from_utf8_lossy(&ctl.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .map(|v| v.trim().to_string())
        .expect("pg_controldata names the system identifier");
    let other_dest = other.pgdata.join("pg_wal/RECOVERYXLOG");
    let out = walvault(
        &["wal-fetch", FIRST, other_dest.to_str().unwrap()],
        &env,
        None,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another cluster")
            && stderr(&out).contains(&format!("{other_sysid} expected")),
        "{}",
        stderr(&out)
    );
    assert!(!other_dest.exists(), "a refused segment creates no file");

    // Absent: exit 1, the ordinary answer, and %p not created.
    std::fs::remove_file(&dest).unwrap();
    let out = fetch("0000000100000000000000FF", &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!dest.exists(), "an absent segment creates no file");
    let out = fetch("00000009.history", &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!dest.exists(), "an absent history file creates no file");
    // A standby polls every few seconds, for days, for what is not archived
    // yet: its misses are not logged at the default level; archive
    // recovery's (the end of the archive) is.
    let pgdata_like = root.path().join("standby");
    std::fs::create_dir_all(pgdata_like.join("pg_wal")).unwrap();
    chown_pg(&pgdata_like);
    let poll = pgdata_like.join("pg_wal/RECOVERYXLOG");
    let poll = poll.to_str().unwrap();
    let miss = || walvault(&["wal-fetch", "0000000100000000000000FF", poll], &env, None);
    let out = miss();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not in the archive"),
        "{}",
        stderr(&out)
    );
    std::fs::write(pgdata_like.join("standby.signal"), "").unwrap();
    let out = miss();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "",
        "a standby's miss says nothing at info level"
    );

    // A flipped byte: fatal, naming the object; never "absent".
    let mut bad = stored_before.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    weed.put(&key, bad);
    let out = fetch(&s1, &env);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("wal/{s1}")) && stderr(&out).contains("integrity"),
        "{}",
        stderr(&out)
    );
    // Truncated: the same.
    weed.put(&key, stored_before[..stored_before.len() / 2].to_vec());
    let out = fetch(&s1, &env);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("wal/{s1}")),
        "{}",
        stderr(&out)
    );
    weed.put(&key, stored_before.clone());
    let out = fetch(&s1, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(pgdata.join(wal(&s1))).unwrap());

    // A repository that is not there (wrong prefix): fatal, not "absent".
    let wrong = weed.walvault_env("no-such-prefix");
    let out = fetch(&s1, &wrong);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds no walvault repository"),
        "{}",
        stderr(&out)
    );

    a.stop();
    // S3 unreachable: retried, then fatal.
    weed.stop();
    let out = fetch(&s2, &env);
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("giving up after 2 attempts"),
        "{}",
        stderr(&out)
    );
    let leftovers: Vec<_> = std::fs::read_dir(&fetch_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n != "RECOVERYXLOG")
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Bad configuration: one clear line naming the key; wal-fetch treats it as fatal.
#[test]
fn configuration_errors_are_one_line() {
    let root = pg_tempdir();
    let mut env = fs_env(&root.path().join("repo"));
    env.insert("WALVAULT_COMPRESSION_LEVEL".into(), "fast".into());
    let out = walvault(&["wal-fetch", FIRST, "/tmp/x"], &env, None);
    assert_eq!(out.status.code(), Some(128));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("WALVAULT_COMPRESSION_LEVEL"), "{err}");
    let out = walvault(&["wal-push", "pg_wal/x"], &env, None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("WALVAULT_COMPRESSION_LEVEL") && err.contains("compression.level"),
        "the line names the variable and the key: {err}"
    );
    env.remove("WALVAULT_COMPRESSION_LEVEL");
    env.insert("WALVAULT_REPO".into(), "ftp://example/x".into());
    let out = walvault(&["wal-push", "pg_wal/x"], &env, None);
    assert!(
        stderr(&out).contains("unsupported scheme 'ftp'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_tells_what_to_put_in_postgresql_conf() {
    let out = walvault(&["--help"], &base_env(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("archive_command = '/usr/local/bin/walvault wal-push %p'"),
        "{text}"
    );
    assert!(text.contains("restore_command = '/usr/local/bin/walvault wal-fetch %f %p'"));
    let out = walvault(&["wal-fetch", "--help"], &base_env(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("128"), "{text}");
}

/// archive-command/walvault-env loads its environment file, and refuses a line
/// that is not KEY=VALUE.
#[test]
fn wrapper_loads_the_environment_file() {
    let root = pg_tempdir();
    let repo = root.path().join("repo-from-env-file");
    let env_file = root.path().join("env");
    std::fs::write(
        &env_file,
        format!(
            "# settings\nWALVAULT_REPO=file://{}\n\nWALVAULT_LOG_LEVEL=warn\n",
            repo.display()
        ),
    )
    .unwrap();
    chown_pg(root.path());
    let mut env = base_env();
    env.insert("WV_ENV_FILE".into(), env_file.display().to_string());
    let run = |env: &BTreeMap<String, String>| {
        pg_command(wrapper_bin().to_str().unwrap(), env)
            .arg("backup-list")
            .output()
            .unwrap()
    };
    // The repository the file names was used: it holds none yet, and says so.
    let out = run(&env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}/ holds no walvault repository", repo.display())),
        "{}",
        stderr(&out)
    );
    std::fs::write(&env_file, "export WALVAULT_REPO\n").unwrap();
    let out = run(&env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not KEY=VALUE"), "{}", stderr(&out));
}
