//! Azurite, Azure Storage's emulator, as the Azure Blob server of the tests:
//! Shared Key signatures checked on every request, blobs kept on disk in its
//! own directory (so a restart keeps them). Installed by
//! scripts/install-test-s3-servers.sh; stopped by its pid on drop.

use super::{free_port, require, stop_pid, tail, test_cache};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known development account and key (public, documented).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::Builder::new()
            .prefix("walvault-azurite-")
            .tempdir()
            .unwrap();
        let mut a = Azurite {
            child: None,
            port: free_port(),
            dir,
        };
        a.launch();
        a
    }

    fn launch(&mut self) {
        let bin = test_cache().join("azurite/node_modules/.bin/azurite-blob");
        require(bin.to_str().unwrap(), "Azurite (npm azurite)");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("azurite.log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.dir.path().join("data"))
            // The emulator knows fewer API versions than the service does.
            .args(["--skipApiVersionCheck", "--disableTelemetry"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start azurite");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "Azurite did not start:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stops the server by its process id (the endpoint becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_pid(c.id() as i32, libc::SIGTERM, Duration::from_secs(10));
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same blobs.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// host:port, for a proxy in front of it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a container (Create Container, signed with the account key).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = aws_smithy_types::base64::decode(KEY).unwrap();
        let sig = aws_smithy_types::base64::encode(hmac_sha256(&key, to_sign.as_bytes()));
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "create container {name}: {answer}"
        );
    }

    /// The environment walvault needs for `az://devstoreaccount1/container/prefix`.
    pub fn walvault_env(&self, container: &str, prefix: &str) -> BTreeMap<String, String> {
        let mut e = super::base_env();
        for (k, v) in [
            (
                "WALVAULT_REPO",
                format!("az://{ACCOUNT}/{container}/{prefix}"),
            ),
            ("WALVAULT_AZURE_ENDPOINT", self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_string()),
        ] {
            e.insert(k.into(), v);
        }
        e
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("azurite.log"), 30)
    }
}

/// Checks a recorded request's Shared Key signature the way the service does
/// (the string to sign from Azure's "Authorize with Shared Key"), with the
/// development account's key: for requests the proxy answers in place of a
/// service feature Azurite lacks, so nobody else checks them.
pub fn shared_key_valid(r: &super::proxy::Recorded) -> Result<(), String> {
    let h = |name: &str| r.header(name).unwrap_or("").to_string();
    let length = h("content-length");
    let mut to_sign = [
        r.method.clone(),
        h("content-encoding"),
        h("content-language"),
        if length == "0" { String::new() } else { length },
        h("content-md5"),
        h("content-type"),
        h("date"),
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
    ]
    .join("\n");
    to_sign.push('\n');
    let mut ms: Vec<(&str, &str)> = r
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str(), v.trim()))
        .collect();
    ms.sort();
    for (k, v) in ms {
        to_sign.push_str(&format!("{k}:{v}\n"));
    }
    let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
    to_sign.push_str(&format!("/{ACCOUNT}{path}"));
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        params
            .entry(k.to_lowercase())
            .or_default()
            .push(v.into_owned());
    }
    for (k, mut vs) in params {
        vs.sort();
        to_sign.push_str(&format!("\n{k}:{}", vs.join(",")));
    }
    let key = aws_smithy_types::base64::decode(KEY).unwrap();
    let want = format!(
        "SharedKey {ACCOUNT}:{}",
        aws_smithy_types::base64::encode(hmac_sha256(&key, to_sign.as_bytes()))
    );
    let got = h("authorization");
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "signature {got:?}, expected {want:?} for {to_sign:?}"
        ))
    }
}

/// HMAC-SHA256 (RFC 2104), for the one request the harness signs itself.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Azurite log tail ---\n{}", self.log_tail());
        }
        self.stop();
    }
}
