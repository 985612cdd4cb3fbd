//! The S3 store against a real S3 server: multipart uploads, aborts, ranged
//! reads, listing, server-side encryption.

mod common;

use common::*;
use std::io::Read;
use walvault::codec::Codec;
use walvault::store::{s3::S3Store, Store};

fn noise(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, so the stored object is as large as the input.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn multipart_round_trip_abort_and_listing() {
    let weed = Seaweed::start();
    // Through a recording proxy: the parts are counted and measured on the wire.
    let proxy = proxy::FaultProxy::start(weed.endpoint().trim_start_matches("http://"));
    let mut cfg = weed.s3_config();
    cfg.endpoint = Some(proxy.endpoint());
    cfg.transport.part_size_mb = 5;
    cfg.transport.max_attempts = 3;
    let creds = (weed.access_key.clone(), weed.secret_key.clone());
    proxy.record();
    let parts = weed.s3(|_| async move {
        // The store reads keys from the AWS chain, as in production.
        std::env::set_var("AWS_ACCESS_KEY_ID", &creds.0);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &creds.1);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let store = S3Store::connect(&cfg, BUCKET.into(), "mp".into())
            .await
            .unwrap();
        let codec = Codec::new(1, vec![], None);

        // 13 MiB of noise: three parts of 5, 5 and 3 MiB.
        let data = noise(13 << 20, 7);
        let t = codec
            .upload(&store, "backups/big", std::io::Cursor::new(data.clone()))
            .await
            .unwrap()
            .trailer;
        assert_eq!(t.plain_len, data.len() as u64);
        let meta = store.head("backups/big").await.unwrap().unwrap();
        assert!(meta.size > 13 << 20, "stored whole: {}", meta.size);
        let (_, out) = codec
            .download(&store, "backups/big", Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert!(out == data, "multipart object differs");
        let tail = store.get_tail("backups/big", 80).await.unwrap().unwrap();
        assert_eq!(&tail[72..], b"WVTRAILR");
        let parts: Vec<usize> = proxy
            .recorded()
            .iter()
            .filter(|r| r.method == "PUT" && r.query_has("partNumber"))
            .map(|r| r.body.len())
            .collect();
        assert_eq!(
            parts,
            vec![5 << 20, 5 << 20, meta.size as usize - (10 << 20)],
            "three parts of 5, 5 and the rest MiB, in order"
        );

        // A source that fails after two parts: nothing is stored.
        struct FailAfter(Vec<u8>, usize);
        impl Read for FailAfter {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.1 >= self.0.len() {
                    return Err(std::io::Error::other("disk failed mid-read"));
                }
                let n = buf.len().min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let e = codec
            .upload(&store, "backups/broken", FailAfter(noise(11 << 20, 9), 0))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("disk failed mid-read"), "{e:#}");
        assert!(store.head("backups/broken").await.unwrap().is_none());
        let recorded = proxy.recorded();
        let started = recorded
            .iter()
            .filter(|r| r.method == "POST" && r.query_has("uploads") && r.target.contains("broken"))
            .count();
        let aborted = recorded
            .iter()
            .filter(|r| {
                r.method == "DELETE" && r.query_has("uploadId") && r.target.contains("broken")
            })
            .count();
        assert_eq!(
            (started, aborted),
            (1, 1),
            "the failed upload was started, then aborted"
        );

        // Listing is relative to the prefix and sorted.
        store
            .put("wal/b", Box::new(std::io::Cursor::new(b"2".to_vec())))
            .await
            .unwrap();
        store
            .put("wal/a", Box::new(std::io::Cursor::new(b"1".to_vec())))
            .await
            .unwrap();
        let keys: Vec<String> = store
            .list("wal/")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, vec!["wal/a", "wal/b"]);
        // Listing after a key is the server's StartAfter (walvault does not
        // filter what comes back): the catalogue's steady-state listing.
        store
            .put("wal/c", Box::new(std::io::Cursor::new(b"3".to_vec())))
            .await
            .unwrap();
        let after: Vec<String> = store
            .list_after("wal/", "wal/b")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(after, vec!["wal/c"]);
        store.delete("wal/a").await.unwrap();
        assert!(store.get("wal/a").await.unwrap().is_none());
        assert!(store.get_tail("wal/a", 80).await.unwrap().is_none());

        // Server-side encryption requested on upload.
        let mut sse_cfg = cfg.clone();
        sse_cfg.sse = Some("AES256".into());
        let sse = S3Store::connect(&sse_cfg, BUCKET.into(), "sse".into())
            .await
            .unwrap();
        codec
            .upload(&sse, "wal/x", std::io::Cursor::new(noise(1 << 20, 3)))
            .await
            .unwrap();
        let (_, back) = codec
            .download(&sse, "wal/x", Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert!(back == noise(1 << 20, 3));
        parts
    });
    assert_eq!(parts.len(), 3);
    // No multipart upload left open anywhere in the bucket (an open one is
    // billed storage that no listing of objects shows).
    let open = weed.s3(|c| async move {
        c.list_multipart_uploads()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .map(|u| u.key().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    });
    assert!(open.is_empty(), "multipart uploads left open: {open:?}");
    let sse = weed.s3(|c| async move {
        c.head_object()
            .bucket(BUCKET)
            .key("sse/wal/x")
            .send()
            .await
            .unwrap()
            .server_side_encryption()
            .map(|s| s.as_str().to_string())
    });
    assert_eq!(
        sse.as_deref(),
        Some("AES256"),
        "the object is stored with SSE-S3"
    );
}

/// What AWS requires of each write, asserted on the requests walvault sends
/// (recorded by the proxy): SeaweedFS accepts requests AWS refuses, so the
/// test checks the wire, not the server's answer. Every write of a body
/// carries its CRC32 (Object Lock requires a checksum; the value is checked
/// here), the multipart start names the algorithm and carries the Object Lock,
/// SSE and tagging headers, the completion lists each part's checksum, and
/// every payload is signed (over plain HTTP AWS allows no unsigned payload).
#[test]
fn every_write_carries_what_aws_requires() {
    use sha2::{Digest, Sha256};
    let weed = Seaweed::start();
    weed.create_locked_bucket("wire-locked");
    let proxy = proxy::FaultProxy::start(weed.endpoint().trim_start_matches("http://"));
    let mut cfg = weed.s3_config();
    cfg.endpoint = Some(proxy.endpoint());
    cfg.transport.part_size_mb = 5;
    cfg.sse = Some("AES256".into());
    cfg.object_lock_mode = Some("GOVERNANCE".into());
    cfg.object_lock_days = 1;
    cfg.class_tags = true;
    let creds = (weed.access_key.clone(), weed.secret_key.clone());
    proxy.record();
    weed.s3(|_| async move {
        std::env::set_var("AWS_ACCESS_KEY_ID", &creds.0);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &creds.1);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        let store = S3Store::connect(&cfg, "wire-locked".into(), "wire".into())
            .await
            .unwrap();
        let codec = Codec::new(1, vec![], None);
        codec
            .upload(&store, "wal/small", std::io::Cursor::new(noise(300_000, 5)))
            .await
            .unwrap();
        codec
            .upload(
                &store,
                "backups/big",
                std::io::Cursor::new(noise(12 << 20, 6)),
            )
            .await
            .unwrap();
        store
            .set_class("wal/small", walvault::store::Class::Permanent)
            .await
            .unwrap();
        // Create-only: the server refuses to replace what is stored.
        let e = codec
            .upload(&store, "wal/small", std::io::Cursor::new(noise(1000, 7)))
            .await
            .unwrap_err();
        assert!(walvault::store::already_stored(&e), "{e:#}");
        let (_, kept) = codec
            .download(&store, "wal/small", Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert!(kept == noise(300_000, 5), "the stored object is untouched");
        let (_, back) = codec
            .download(&store, "backups/big", Vec::new())
            .await
            .unwrap()
            .unwrap();
        assert!(back == noise(12 << 20, 6), "stored and read back whole");
    });
    let requests = proxy.recorded();
    let crc = |body: &[u8]| aws_smithy_types::base64::encode(crc32fast::hash(body).to_be_bytes());
    let (mut puts, mut starts, mut parts, mut completes, mut taggings) = (0, 0, 0, 0, 0);
    let mut part_crcs = Vec::new();
    for r in &requests {
        let what = format!("{} {}", r.method, r.target);
        let h = |name: &str| {
            r.header(name)
                .unwrap_or_else(|| panic!("{what}: no {name} header: {:?}", r.headers))
        };
        // Signed, with the payload's own hash: no UNSIGNED-PAYLOAD, no streaming signature.
        assert!(
            h("authorization").starts_with("AWS4-HMAC-SHA256 Credential="),
            "{what}"
        );
        assert_eq!(
            h("x-amz-content-sha256"),
            hex::encode(Sha256::digest(&r.body)),
            "{what}: the signed payload hash"
        );
        if !r.body.is_empty() {
            assert_eq!(h("content-length"), r.body.len().to_string(), "{what}");
        }
        let with_body_checksum = |r: &proxy::Recorded| {
            assert_eq!(
                h("x-amz-checksum-crc32"),
                crc(&r.body),
                "{what}: CRC32 of the body"
            );
            if let Some(alg) = r.header("x-amz-sdk-checksum-algorithm") {
                assert_eq!(alg, "CRC32", "{what}");
            }
            assert!(r.header("x-amz-trailer").is_none(), "{what}: no trailer");
        };
        let lock_sse_tags = || {
            assert_eq!(h("x-amz-server-side-encryption"), "AES256", "{what}");
            assert_eq!(h("x-amz-object-lock-mode"), "GOVERNANCE", "{what}");
            assert!(
                h("x-amz-object-lock-retain-until-date").contains('T'),
                "{what}"
            );
            assert!(h("x-amz-tagging").starts_with("walvault-class="), "{what}");
        };
        match r.method.as_str() {
            "PUT" if r.query_has("tagging") => {
                taggings += 1;
                let md5 = r.header("content-md5");
                let sum = r.header("x-amz-checksum-crc32");
                assert!(
                    md5.is_some() || sum.is_some(),
                    "{what}: Content-MD5 or a checksum"
                );
                if let Some(sum) = sum {
                    assert_eq!(sum, crc(&r.body), "{what}");
                }
            }
            "PUT" if r.query_has("partNumber") => {
                parts += 1;
                assert!(r.query_has("uploadId"), "{what}");
                with_body_checksum(r);
                part_crcs.push(crc(&r.body));
            }
            "PUT" => {
                puts += 1;
                with_body_checksum(r);
                lock_sse_tags();
                assert_eq!(h("if-none-match"), "*", "{what}: create-only");
            }
            "POST" if r.query_has("uploads") => {
                starts += 1;
                assert_eq!(h("x-amz-checksum-algorithm"), "CRC32", "{what}");
                lock_sse_tags();
            }
            "POST" if r.query_has("uploadId") => {
                completes += 1;
                assert_eq!(h("if-none-match"), "*", "{what}: create-only");
                let xml = String::from_utf8_lossy(&r.body);
                for (n, sum) in part_crcs.iter().enumerate() {
                    assert!(
                        xml.contains(&format!("<ChecksumCRC32>{sum}</ChecksumCRC32>")),
                        "{what}: part {} checksum in {xml}",
                        n + 1
                    );
                }
                assert_eq!(xml.matches("<Part>").count(), part_crcs.len(), "{xml}");
            }
            "GET" | "HEAD" | "DELETE" => {}
            _ => panic!("{what}: a request the test does not know"),
        }
    }
    assert_eq!(
        (puts, starts, parts, completes, taggings),
        (2, 1, 3, 1, 1),
        "two single PUTs (one refused), one multipart upload of three parts, one tagging: {:?}",
        requests
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}

/// An HTTPS endpoint signed by a private CA: refused without `s3.ca_file`, used
/// with it; a missing or certificate-less file is one line naming the setting.
#[test]
fn https_endpoint_with_a_private_ca() {
    let weed = Seaweed::start_with_https();
    let dir = pg_tempdir();
    let (endpoint, cert) = weed.https_endpoint(dir.path());
    // A cluster's data directory (never started) binds the repository.
    let pg = Cluster::init(dir.path(), "a");
    let history = pg.pgdata.join("pg_wal/00000002.history");
    std::fs::write(&history, "1\t0/3000000\tno recovery target specified\n").unwrap();
    chown_pg(&history);
    let mut env = weed.walvault_env("tls");
    env.insert("AWS_ENDPOINT_URL".into(), endpoint);
    env.insert("WALVAULT_S3_MAX_ATTEMPTS".into(), "1".into());
    let push = |env: &std::collections::BTreeMap<String, String>| {
        walvault(&["wal-push", history.to_str().unwrap()], env, None)
    };

    // The system's roots do not know the CA: the TLS handshake fails, said so.
    let (code, line) = failure(&push(&env));
    assert_ne!(code, Some(0));
    assert!(line.contains("invalid peer certificate"), "{line}");

    for (file, says) in [
        (dir.path().join("absent.pem"), "s3.ca_file: cannot read"),
        (history.clone(), "holds no PEM certificate"),
    ] {
        let mut e = env.clone();
        e.insert("WALVAULT_S3_CA_FILE".into(), file.display().to_string());
        let (code, line) = failure(&push(&e));
        assert_ne!(code, Some(0));
        assert!(
            line.contains(says) && line.contains(file.to_str().unwrap()),
            "{line}"
        );
    }

    env.insert("WALVAULT_S3_CA_FILE".into(), cert.display().to_string());
    let init = ["repo-init", "--pgdata", pg.pgdata.to_str().unwrap()];
    ok(&walvault(&init, &env, None), "repo-init over HTTPS");
    ok(&push(&env), "wal-push over HTTPS with s3.ca_file");
    let dest = dir.path().join("fetched");
    ok(
        &walvault(
            &["wal-fetch", "00000002.history", dest.to_str().unwrap()],
            &env,
            Some(dir.path()),
        ),
        "wal-fetch over HTTPS with s3.ca_file",
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&history).unwrap()
    );
}
