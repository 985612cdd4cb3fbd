//! The second S3 server of the tests: moto's, with every request's SigV4
//! signature checked against an IAM key (tests/servers/moto_signed.py), so a
//! request SeaweedFS would take unsigned or mis-signed is refused here. It
//! keeps versions, enforces Object Lock retention and conditional writes.
//! Installed by scripts/install-test-s3-servers.sh; stopped by its pid on drop.

use super::{free_port, require, stop_pid, tail, test_cache, S3Server};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    child: Option<Child>,
    port: u16,
    access_key: String,
    secret_key: String,
    log: tempfile::NamedTempFile,
}

fn python() -> PathBuf {
    let p = test_cache().join("moto/bin/python");
    require(
        p.to_str().unwrap(),
        "moto's S3 server (a virtual environment with moto[server])",
    );
    p
}

impl Moto {
    pub fn start() -> Moto {
        let log = tempfile::Builder::new()
            .prefix("walvault-moto-")
            .suffix(".log")
            .tempfile()
            .unwrap();
        for attempt in 1.. {
            let port = free_port();
            let mut child = Command::new(python())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/servers/moto_signed.py"
                ))
                .arg(port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(log.reopen().unwrap()))
                .spawn()
                .expect("start moto");
            // Its first line, once IAM authentication is on, is the key.
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(out).read_line(&mut line);
                let _ = tx.send(line);
            });
            let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
            if let Ok(keys) = serde_json::from_str::<serde_json::Value>(&line) {
                return Moto {
                    port,
                    access_key: keys["access_key"].as_str().unwrap().to_string(),
                    secret_key: keys["secret_key"].as_str().unwrap().to_string(),
                    child: Some(child),
                    log,
                };
            }
            // A port taken between choosing and binding: start over on another.
            stop_pid(child.id() as i32, libc::SIGTERM, Duration::from_secs(5));
            let _ = child.wait();
            assert!(attempt < 3, "moto did not start:\n{}", tail(log.path(), 30));
        }
        unreachable!()
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stops the server by its process id (S3 becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_pid(c.id() as i32, libc::SIGTERM, Duration::from_secs(10));
            let _ = c.wait();
        }
    }

    /// A bucket; with Object Lock (and so versioning) when `locked`.
    pub fn create_bucket(&self, name: &str, locked: bool) {
        self.s3(|c| async move {
            c.create_bucket()
                .bucket(name)
                .object_lock_enabled_for_bucket(locked)
                .send()
                .await
                .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
        })
        .unwrap_or_else(|e| panic!("create bucket {name}: {e}"));
    }

    pub fn log_tail(&self) -> String {
        tail(self.log.path(), 30)
    }
}

impl S3Server for Moto {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn keys(&self) -> (String, String) {
        (self.access_key.clone(), self.secret_key.clone())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- moto log tail ---\n{}", self.log_tail());
        }
        self.stop();
    }
}
