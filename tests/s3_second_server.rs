//! A second, independent S3 server: moto's, with every request's signature
//! checked, versions kept, Object Lock retention and conditional writes enforced.
//! The archive loop, a multipart backup, an exact recovery, `verify` with and
//! without the key, create-only writes, a backup part replaced after the fact
//! (told by its version id), and the exit codes and one-line errors for bad
//! credentials, a missing bucket and a dead endpoint.

mod common;

use common::moto::Moto;
use common::*;
use std::collections::BTreeMap;

const BUCKET: &str = "walvault-signed";

fn wal_fetch(
    env: &BTreeMap<String, String>,
    name: &str,
    dest: &std::path::Path,
) -> std::process::Output {
    walvault(&["wal-fetch", name, dest.to_str().unwrap()], env, None)
}

/// The current bytes of `key` in the test bucket.
fn object(moto: &Moto, key: &str) -> Vec<u8> {
    moto.s3(|c| async move {
        let o = c.get_object().bucket(BUCKET).key(key).send().await.unwrap();
        o.body.collect().await.unwrap().to_vec()
    })
}

/// Segments still in pg_wal, oldest first.
fn ready_or_archived(a: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(a.pgdata.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_segment(n))
        .collect();
    names.sort();
    names
}

#[test]
fn the_whole_loop_on_a_second_s3_server_with_signatures_checked() {
    let mut moto = Moto::start();
    moto.create_bucket(BUCKET, true);
    let keys = pg_tempdir();
    let idfile = keys.path().join("identity.txt");
    let recipient = keygen(&idfile);
    let mut env = moto.walvault_env_in(BUCKET, "pg");
    for (k, v) in [
        ("WALVAULT_ENCRYPTION_RECIPIENTS", recipient.as_str()),
        ("WALVAULT_S3_OBJECT_LOCK_MODE", "GOVERNANCE"),
        ("WALVAULT_S3_OBJECT_LOCK_DAYS", "1"),
        ("WALVAULT_S3_PART_SIZE_MB", "5"),
    ] {
        env.insert(k.into(), v.into());
    }
    // The database host archives with the recipient only; restores have the key.
    let mut keyed = env.clone();
    keyed.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        idfile.display().to_string(),
    );
    let s = source(|_| env.clone());
    let a = &s.a;

    // Parts above 5 MiB, so multipart.
    let (id, target, last) = backup_then_target(&s, 12000);
    let manifest = manifest_json(&env, &id);
    let parts = manifest["parts"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .any(|p| p["stored_bytes"].as_u64().unwrap() > 5 << 20),
        "one part above s3.part_size_mb (multipart): {parts:?}"
    );
    assert!(
        parts
            .iter()
            .all(|p| p["version"].as_str().is_some_and(|v| !v.is_empty())),
        "every part's version id: {parts:?}"
    );
    let versions = manifest["versions"].as_object().unwrap();
    for name in ["backup_label", "files.json"] {
        assert!(
            versions.contains_key(&format!("backups/{id}/{name}")),
            "{name}'s version id: {versions:?}"
        );
    }

    // Fetched back byte for byte, through a signed GET.
    let scratch = pg_tempdir();
    chown_pg(scratch.path());
    let out = wal_fetch(&keyed, &last, &scratch.path().join("seg"));
    ok(&out, "wal-fetch");
    assert!(
        std::fs::read(scratch.path().join("seg")).unwrap()
            == std::fs::read(a.pgdata.join("pg_wal").join(&last)).unwrap(),
        "{last} fetched byte-identical"
    );

    // Object Lock: every object carries its retention, and the server enforces it.
    let key = format!("pg/wal/{last}");
    let (mode, until, version) = moto.s3(|c| {
        let key = key.clone();
        async move {
            let h = c
                .head_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .unwrap();
            (
                h.object_lock_mode().map(|m| m.as_str().to_string()),
                h.object_lock_retain_until_date().map(|d| d.secs()),
                h.version_id().unwrap().to_string(),
            )
        }
    });
    assert_eq!(mode.as_deref(), Some("GOVERNANCE"));
    assert!(
        until.unwrap() > chrono::Utc::now().timestamp() + 3600,
        "{until:?}"
    );
    let deleted = moto.s3(|c| {
        let (key, version) = (key.clone(), version.clone());
        async move {
            c.delete_object()
                .bucket(BUCKET)
                .key(key)
                .version_id(version)
                .send()
                .await
                .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
        }
    });
    assert!(
        deleted.as_ref().is_err_and(|e| e.contains("AccessDenied")),
        "a locked version cannot be deleted: {deleted:?}"
    );

    // Create-only: an identical re-push is success, a different one is refused
    // and the stored object keeps its bytes.
    let stored = object(&moto, &key);
    let copy = scratch.path().join(&last);
    std::fs::copy(a.pgdata.join("pg_wal").join(&last), &copy).unwrap();
    chown_pg(&copy);
    let again = walvault(&["wal-push", copy.to_str().unwrap()], &env, None);
    ok(&again, "identical re-push");
    let mut data = std::fs::read(&copy).unwrap();
    data[9000] ^= 0x55;
    std::fs::write(&copy, &data).unwrap();
    let (code, line) = failure(&walvault(&["wal-push", copy.to_str().unwrap()], &env, None));
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("DIFFERENT content"), "{line}");
    let now = object(&moto, &key);
    assert!(now == stored, "the stored segment kept its bytes");

    // Two pushes of one segment at once (a primary and a standby with
    // archive_mode = always): both look, find nothing, upload; the server lets
    // one create it and answers the other 412, which compares and succeeds.
    let mut race = env.clone();
    race.insert("WALVAULT_REPO".into(), format!("s3://{BUCKET}/race"));
    let segments: Vec<String> = ready_or_archived(a);
    let mut raced = false;
    for seg in segments.iter().take(5) {
        let file = a.pgdata.join("pg_wal").join(seg);
        let children: Vec<_> = (0..2)
            .map(|_| {
                walvault_child(&race)
                    .args(["wal-push", file.to_str().unwrap()])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            ok(&out, &format!("concurrent push of {seg}"));
            raced |= stderr(&out).contains("stored by another push meanwhile");
        }
        let stored = moto.s3(|c| {
            let key = format!("race/wal/{seg}");
            async move { c.head_object().bucket(BUCKET).key(key).send().await.is_ok() }
        });
        assert!(stored, "{seg} stored");
        if raced {
            break;
        }
    }
    assert!(raced, "no push met the other's object through a 412");

    // verify: stored bytes without the key, everything with it.
    let out = ok(
        &walvault(&["verify", "--backup", &id], &env, None),
        "verify without the key",
    );
    assert!(
        out.contains("stored bytes only") && out.contains(": OK"),
        "{out}"
    );
    let out = ok(
        &walvault(&["verify", "--backup", &id], &keyed, None),
        "verify with the key",
    );
    assert!(
        out.contains("plaintext sha256") && out.contains(": OK"),
        "{out}"
    );

    // A part replaced after the fact, by bytes that still decode (the same
    // bytes, written again): only its version id tells, and verify does.
    let part = parts[0]["key"].as_str().unwrap().to_string();
    let full = format!("pg/{part}");
    moto.s3(|c| {
        let full = full.clone();
        async move {
            let o = c
                .get_object()
                .bucket(BUCKET)
                .key(&full)
                .send()
                .await
                .unwrap();
            let body = o.body.collect().await.unwrap().into_bytes();
            c.put_object()
                .bucket(BUCKET)
                .key(&full)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    });
    let replaced = |what: &str| {
        for e in [&env, &keyed] {
            let out = walvault(&["verify", "--backup", &id], e, None);
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{what}: {text}");
            assert!(
                text.contains(&format!("REPLACED s3://{BUCKET}/{full}"))
                    && text.contains(parts[0]["version"].as_str().unwrap())
                    && text.contains("1 PROBLEM(S)"),
                "{what}: {text}"
            );
        }
    };
    replaced("the same bytes written again");
    // Garbage over the part and the file list: verify and recover read the
    // versions the backup wrote, so only the replacement is reported, and the
    // recovery is exact.
    for key in [full.clone(), format!("pg/backups/{id}/files.json")] {
        moto.s3(|c| async move {
            c.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(vec![0x5a; 4096].into())
                .send()
                .await
                .unwrap();
        });
    }
    let out = walvault(&["verify", "--backup", &id], &keyed, None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("REPLACED").count(), 2, "{text}");
    assert!(!text.contains("DAMAGED"), "{text}");

    // Exact point-in-time recovery from this server.
    let b = s.recover_with("b", &["--target-time", &target], &keyed);
    assert_eq!(
        summary(&b),
        expected(&[(1, 40)]),
        "rows up to the target, none after"
    );
    drop(b);

    // Bad credentials, a missing bucket, a dead endpoint: one readable line,
    // and wal-fetch never answers 1 ("not in the archive") for any of them.
    let dest = scratch.path().join("x");
    let mut bad = keyed.clone();
    bad.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let (code, line) = failure(&wal_fetch(&bad, &last, &dest));
    assert!(code.is_some_and(|c| c > 1), "{code:?} {line}");
    assert!(
        line.contains("SignatureDoesNotMatch")
            && line.contains("HTTP 403")
            && line.contains("check the credentials")
            && line.contains(&format!("s3://{BUCKET}/pg/")),
        "{line}"
    );
    assert!(line.len() < 600, "{line}");
    let (code, line) = failure(&walvault(&["wal-push", copy.to_str().unwrap()], &bad, None));
    assert!(code.is_some_and(|c| c != 0), "{line}");
    assert!(
        line.contains("SignatureDoesNotMatch") && line.contains("HTTP 403"),
        "{line}"
    );

    let mut nobucket = keyed.clone();
    nobucket.insert("WALVAULT_REPO".into(), "s3://no-such-bucket-here/pg".into());
    let (code, line) = failure(&wal_fetch(&nobucket, &last, &dest));
    assert!(code.is_some_and(|c| c > 1), "{code:?} {line}");
    assert!(
        line.contains("NoSuchBucket")
            && line.contains("HTTP 404")
            && line.contains("check the bucket"),
        "{line}"
    );

    let pid = moto.pid().unwrap();
    moto.stop();
    assert!(!process_alive(pid));
    let (code, line) = failure(&wal_fetch(&keyed, &last, &dest));
    assert!(code.is_some_and(|c| c > 1), "{code:?} {line}");
    assert!(
        line.contains("S3 request failed") && line.contains("check s3.endpoint"),
        "{line}"
    );
    assert!(!dest.exists(), "no file written by a failed fetch");
    drop(s);
}
