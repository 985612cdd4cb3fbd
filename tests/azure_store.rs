//! The Azure Blob backend against Azurite (Shared Key signatures checked): the
//! archive loop, a backup staged in blocks, an exact recovery, create-only
//! writes, a corrupted blob, Azurite stopped while PostgreSQL archives (nothing
//! lost once it is back), and the exit codes and one-line errors for a wrong
//! key and a dead endpoint.

mod common;

use common::azurite::Azurite;
use common::*;
use std::time::Duration;

const CONTAINER: &str = "walvault";

#[test]
fn the_whole_loop_on_azure_blob_storage() {
    let mut az = Azurite::start();
    az.create_container(CONTAINER);
    let keys = pg_tempdir();
    let idfile = keys.path().join("identity.txt");
    let recipient = keygen(&idfile);
    let mut env = az.walvault_env(CONTAINER, "pg");
    env.insert("WALVAULT_ENCRYPTION_RECIPIENTS".into(), recipient);
    // Blocks of 4 MiB: the backup's data part is staged in blocks, most WAL is one Put Blob.
    env.insert("WALVAULT_AZURE_PART_SIZE_MB".into(), "4".into());
    env.insert("WALVAULT_BACKUP_WAL_WAIT_SECONDS".into(), "30".into());
    let mut keyed = env.clone();
    keyed.insert(
        "WALVAULT_ENCRYPTION_IDENTITY_FILE".into(),
        idfile.display().to_string(),
    );
    let s = source(|_| env.clone());
    let a = &s.a;

    let (id, target, last) = backup_then_target(&s, 6000);
    let manifest = manifest_json(&env, &id);
    let parts = manifest["parts"].as_array().unwrap();
    assert!(
        parts
            .iter()
            .any(|p| p["stored_bytes"].as_u64().unwrap() > 4 << 20),
        "a part above azure.part_size_mb (staged in blocks): {parts:?}"
    );

    // Fetched back byte for byte.
    let scratch = pg_tempdir();
    let fetched = scratch.path().join("seg");
    ok(
        &walvault(
            &["wal-fetch", &last, fetched.to_str().unwrap()],
            &keyed,
            None,
        ),
        "wal-fetch",
    );
    let original = std::fs::read(a.pgdata.join("pg_wal").join(&last)).unwrap();
    assert!(
        std::fs::read(&fetched).unwrap() == original,
        "{last} byte-identical"
    );

    // Create-only: identical re-push 0, a different one refused, the blob untouched.
    let copy = scratch.path().join(&last);
    std::fs::write(&copy, &original).unwrap();
    chown_pg(&copy);
    ok(
        &walvault(&["wal-push", copy.to_str().unwrap()], &env, None),
        "identical re-push",
    );
    let mut data = original.clone();
    data[9000] ^= 0x55;
    std::fs::write(&copy, &data).unwrap();
    let (code, line) = failure(&walvault(&["wal-push", copy.to_str().unwrap()], &env, None));
    assert_eq!(code, Some(1), "{line}");
    assert!(line.contains("DIFFERENT content"), "{line}");
    let refetched = scratch.path().join("again");
    ok(
        &walvault(
            &["wal-fetch", &last, refetched.to_str().unwrap()],
            &keyed,
            None,
        ),
        "wal-fetch after the refused push",
    );
    assert!(
        std::fs::read(&refetched).unwrap() == original,
        "the blob kept its bytes"
    );

    // Exact point-in-time recovery from Azure.
    let b = s.recover_with("b", &["--target-time", &target], &keyed);
    assert_eq!(
        summary(&b),
        expected(&[(1, 40)]),
        "rows up to the target only"
    );
    drop(b);
    let out = ok(
        &walvault(&["verify", "--backup", &id], &keyed, None),
        "verify with the key",
    );
    assert!(out.contains(": OK"), "{out}");

    // Azurite stopped while PostgreSQL archives: pushes fail, nothing is lost.
    let failed = a.archiver_failed_count();
    let pid = az.pid().unwrap();
    az.stop();
    assert!(!process_alive(pid));
    let dead = scratch.path().join("dead");
    let (code, line) = failure(&walvault(
        &["wal-fetch", &last, dead.to_str().unwrap()],
        &keyed,
        None,
    ));
    assert_eq!(code, Some(128), "a dead endpoint is not 'absent': {line}");
    assert!(line.contains("check azure.endpoint"), "{line}");
    assert!(!dead.exists());
    insert(a, 61, 80);
    let during = a.switch_wal();
    wait_for("a failed archive attempt", Duration::from_secs(60), || {
        a.archiver_failed_count() > failed
    });
    az.restart();
    a.wait_archived(&during, Duration::from_secs(120));
    ok(&walvault(&["wal-verify"], &env, None), "wal-verify: no gap");
    let b = s.recover_with("c", &[], &keyed);
    assert_eq!(
        summary(&b),
        expected(&[(1, 80)]),
        "every row back after the outage"
    );
    drop(b);

    // A corrupted blob: wal-fetch stops recovery (128), writes nothing.
    let store_env = |k: &str| env[k].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = walvault::store::azure::Settings {
            endpoint: Some(store_env("WALVAULT_AZURE_ENDPOINT")),
            ..Default::default()
        };
        std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", common::azurite::KEY);
        let store = walvault::store::azure::AzureStore::connect(
            &cfg,
            common::azurite::ACCOUNT.into(),
            CONTAINER.into(),
            "pg".into(),
        )
        .unwrap();
        use tokio::io::AsyncReadExt;
        use walvault::store::Store;
        let key = format!("wal/{during}");
        let mut stored = Vec::new();
        store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .read_to_end(&mut stored)
            .await
            .unwrap();
        let n = stored.len();
        stored[n / 2] ^= 0x01;
        store
            .write_bytes(
                &key,
                stored.into(),
                walvault::store::Class::Standard,
                walvault::store::Mode::Replace,
            )
            .await
            .unwrap();
    });
    let bad = scratch.path().join("bad");
    let (code, line) = failure(&walvault(
        &["wal-fetch", &during, bad.to_str().unwrap()],
        &keyed,
        None,
    ));
    assert_eq!(code, Some(128), "{line}");
    assert!(!bad.exists(), "nothing written from a corrupted blob");

    // A wrong account key: one line saying what to check, never "absent".
    let mut wrong = keyed.clone();
    wrong.insert(
        "AZURE_STORAGE_ACCOUNT_KEY".into(),
        aws_smithy_types::base64::encode([7u8; 64]),
    );
    let (code, line) = failure(&walvault(
        &["wal-fetch", &last, dead.to_str().unwrap()],
        &wrong,
        None,
    ));
    assert_eq!(code, Some(128), "{line}");
    assert!(
        line.contains("check the Azure credentials") && line.len() < 700,
        "{line}"
    );
    drop(s);
}

/// `azure.immutability_mode`: every blob walvault writes (a WAL segment, a
/// backup's parts staged in blocks, its manifest) gets a Set Blob Immutability
/// Policy request that Azure's documentation accepts, signed with the account
/// key. Azurite does not implement the operation (it answers 501), so the proxy
/// in front of it answers those requests, after the test has checked them; the
/// rest goes to Azurite. A refused policy fails the push and PostgreSQL's retry
/// protects the blob; retention keeps what is still immutable.
#[test]
fn immutability_policies_on_every_blob() {
    use common::proxy::FaultProxy;
    let az = Azurite::start();
    az.create_container("locked");
    let proxy = FaultProxy::start(&az.address());
    let mut env = az.walvault_env("locked", "pg");
    env.insert(
        "WALVAULT_AZURE_ENDPOINT".into(),
        format!("{}/{}", proxy.endpoint(), common::azurite::ACCOUNT),
    );
    env.insert("WALVAULT_AZURE_IMMUTABILITY_MODE".into(), "Unlocked".into());
    env.insert("WALVAULT_AZURE_IMMUTABILITY_DAYS".into(), "7".into());
    env.insert("WALVAULT_AZURE_PART_SIZE_MB".into(), "1".into());
    env.insert("WALVAULT_BACKUP_WAL_WAIT_SECONDS".into(), "30".into());
    const POLICY: &str = "comp=immutabilityPolicies";
    proxy.answer(POLICY, 200, "");
    proxy.record();

    let s = source(|_| env.clone());
    let a = &s.a;
    a.psql("create table t (i bigint primary key, note text)");
    a.psql("create table bulk as select g, md5(g::text) as m from generate_series(1, 60000) g");
    insert(a, 1, 20);
    let b1 = s.backup();
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(120));

    // Every write is followed by its policy request; each request is what the
    // service documents, and validly signed.
    let recorded = proxy.recorded();
    let path_of = |t: &str| t.split('?').next().unwrap().to_string();
    let writes: Vec<(String, bool)> = recorded
        .iter()
        .filter(|r| r.method == "PUT" && r.header("x-ms-blob-type").is_some())
        .map(|r| (path_of(&r.target), false))
        .chain(
            recorded
                .iter()
                .filter(|r| {
                    r.method == "PUT" && r.query_has("comp") && r.target.contains("comp=blocklist")
                })
                .map(|r| (path_of(&r.target), true)),
        )
        .collect();
    let policies: Vec<&common::proxy::Recorded> = recorded
        .iter()
        .filter(|r| r.target.contains(POLICY))
        .collect();
    assert!(
        writes.iter().any(|(_, blocks)| *blocks),
        "a backup part staged in blocks: {writes:?}"
    );
    assert!(writes
        .iter()
        .any(|(p, _)| p.ends_with(&format!("/pg/wal/{last}"))));
    assert!(writes
        .iter()
        .any(|(p, _)| p.ends_with(&format!("/pg/backups/{b1}/manifest.json"))));
    for (path, _) in &writes {
        assert!(
            policies.iter().any(|r| path_of(&r.target) == *path),
            "no immutability policy for {path}"
        );
    }
    let week = chrono::Utc::now() + chrono::Duration::days(7);
    for r in &policies {
        assert_eq!(r.method, "PUT", "{}", r.target);
        assert_eq!(r.header("x-ms-immutability-policy-mode"), Some("Unlocked"));
        let until = r.header("x-ms-immutability-policy-until-date").unwrap();
        let until = chrono::DateTime::parse_from_rfc2822(until).unwrap();
        assert!(
            until.signed_duration_since(week).num_seconds().abs() < 600,
            "seven days from now, in RFC 1123: {until}"
        );
        assert!(
            r.header("x-ms-version").unwrap() >= "2020-06-12",
            "a service version that has the operation"
        );
        let date = r.header("x-ms-date").or(r.header("date")).unwrap();
        let age = chrono::Utc::now()
            .signed_duration_since(chrono::DateTime::parse_from_rfc2822(date).unwrap());
        assert!(
            age.num_seconds().abs() < 900,
            "Date or x-ms-date, now: {date}"
        );
        assert!(r.body.is_empty(), "no body");
        common::azurite::shared_key_valid(r).unwrap();
    }

    // A refused policy (Azurite's own 501 now) fails the push, one line in
    // PostgreSQL's log; once policies are accepted again the archiver's retry
    // protects the blob already there and goes on.
    let failed = a.archiver_failed_count();
    let from = a.log_len();
    proxy.pass(POLICY);
    insert(a, 21, 40);
    let seg = a.switch_wal();
    wait_for(
        "a refused policy fails the push",
        Duration::from_secs(60),
        || a.archiver_failed_count() > failed,
    );
    let log = a.log_since(from);
    let line = log
        .lines()
        .find(|l| l.contains("immutability policy of az://"))
        .unwrap_or_else(|| panic!("the refusal in the server log:\n{log}"));
    assert!(
        line.contains(&format!("/pg/wal/{seg} failed: APINotImplemented"))
            && line.contains("(HTTP 501)")
            && line.contains("version-level immutability support"),
        "{line}"
    );
    proxy.record();
    proxy.answer(POLICY, 200, "");
    a.wait_archived(&seg, Duration::from_secs(120));
    assert!(
        proxy
            .recorded()
            .iter()
            .any(|r| r.target.contains(POLICY) && r.target.contains(&format!("/pg/wal/{seg}"))),
        "the retry protected {seg}"
    );

    // Retention: a backup whose blobs are immutable stays, with its WAL; once
    // the policy has ended it goes.
    insert(a, 41, 60);
    let b2 = s.backup();
    let until = (chrono::Utc::now() + chrono::Duration::days(3))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    proxy.head_header(Some(("x-ms-immutability-policy-until-date", &until)));
    let out = ok(
        &walvault(&["delete", "--keep-last", "1", "--confirm"], &env, None),
        "delete while immutable",
    );
    assert!(out.contains("under Object Lock until"), "{out}");
    let listed = ok(&walvault(&["backup-list"], &env, None), "backup-list");
    assert!(listed.contains(&b1) && listed.contains(&b2), "{listed}");
    proxy.head_header(None);
    ok(
        &walvault(&["delete", "--keep-last", "1", "--confirm"], &env, None),
        "delete once the policy has ended",
    );
    let listed = ok(&walvault(&["backup-list"], &env, None), "backup-list");
    assert!(!listed.contains(&b1) && listed.contains(&b2), "{listed}");
    drop(s);
}
