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
    let mut cfg = weed.s3_config();
    cfg.part_size_mb = 5;
    cfg.max_attempts = 3;
    let creds = (weed.access_key.clone(), weed.secret_key.clone());
    weed.s3(|_| async move {
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
    });
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
