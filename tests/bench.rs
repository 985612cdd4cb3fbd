//! Benchmark (not part of the test run): `scripts/bench.sh [--only calls,profile,drain,replay,backups,incremental,summaries,catalog,files,logical,receive] [--runs N] ...`.
//!
//! Real WAL and databases from pgbench; walvault against pgBackRest like for
//! like: the same S3 endpoint over HTTPS (certificate checked against the same
//! private CA), zstd-1 and encryption on both, both started the same way, rows
//! at the same parallelism and prefetch depth beside rows at each tool's best
//! settings, the order of the tools alternated between runs, every fetched
//! segment compared with its original. Baselines in the same invocation: `cp`
//! (PostgreSQL's documented archive command) and pg_basebackup. Prints medians
//! and ratios.

mod common;

use common::azurite::Azurite;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    runs: usize,
    segments: usize,
    scale: usize,
    /// Segments in the backlog-drain and in-order fetch part.
    drain: usize,
    /// MB of WAL in the replay part.
    replay_mb: usize,
    /// The parts to run (--only calls,profile,drain,replay,backups,incremental,summaries,catalog,files); empty: all.
    only: Vec<String>,
    /// Files of the many-files part.
    files: usize,
    /// MiB of the table the logical part restores with restore-table.
    table_mb: usize,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        segments: 64,
        scale: 100,
        drain: 256,
        replay_mb: 2200,
        only: Vec::new(),
        files: 1_000_000,
        table_mb: 1024,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        match v[i].as_str() {
            "--runs" => {
                a.runs = v[i + 1].parse().expect("--runs N");
                i += 1;
            }
            "--scale" => {
                a.scale = v[i + 1].parse().expect("--scale N");
                i += 1;
            }
            "--drain" => {
                a.drain = v[i + 1].parse().expect("--drain N");
                i += 1;
            }
            "--only" => {
                a.only = v[i + 1].split(',').map(str::to_string).collect();
                i += 1;
            }
            "--replay-mb" => {
                a.replay_mb = v[i + 1].parse().expect("--replay-mb N");
                i += 1;
            }
            "--table-mb" => {
                a.table_mb = v[i + 1].parse().expect("--table-mb N");
                i += 1;
            }
            "--files" => {
                a.files = v[i + 1].parse().expect("--files N");
                i += 1;
            }
            "--segments" => {
                a.segments = v[i + 1].parse().expect("--segments N");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    a
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

/// Real WAL: pgbench initialisation (bulk load) and transactions (updates, full-page images).
fn make_segments(root: &Path, n: usize) -> (Vec<PathBuf>, Cluster) {
    let stage = root.join("stage");
    std::fs::create_dir(&stage).unwrap();
    chown_pg(&stage);
    let mut c = Cluster::init(root, "src");
    c.conf(&format!(
        "archive_mode = on\narchive_command = 'cp %p {}/%f'\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min",
        stage.display()
    ));
    c.start(&base_env());
    c.pgbench(&["-i", "-s", "20", "-q"]);
    let count = || {
        std::fs::read_dir(&stage)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().len() == 24)
            .count()
    };
    while count() < n + 1 {
        c.pgbench(&["-n", "-c", "2", "-j", "2", "-T", "5"]);
        let last = c.switch_wal();
        c.wait_archived(&last, Duration::from_secs(120));
    }
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&stage)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segs.sort();
    // The first segment is initdb's; take real workload from the second on.
    (segs.into_iter().skip(1).take(n).collect(), c)
}

struct Pass {
    per_call_ms: Vec<f64>,
    wall: Duration,
    /// Largest resident set of any one call, KiB.
    peak_rss_kb: i64,
}

/// Runs a command to its end; returns whether it succeeded, its stderr and its
/// peak RSS in KiB. Measured by GNU time: a child forked from this (large)
/// process would report this process's high-water mark instead of its own.
fn run_measured(c: &mut Command) -> (bool, String, i64) {
    let (out, rss) = measure(c);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        rss,
    )
}

/// Runs a command under GNU time: its output and its peak RSS in KiB.
fn measure(c: &Command) -> (std::process::Output, i64) {
    let rss_file = std::env::temp_dir().join(format!("walvault-bench-rss.{}", std::process::id()));
    let _ = std::fs::remove_file(&rss_file);
    let mut w = Command::new("/usr/bin/time");
    w.args(["-q", "-f", "%M", "-o"])
        .arg(&rss_file)
        .arg(c.get_program())
        .args(c.get_args())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            w.env(k, v);
        }
    }
    if let Some(d) = c.get_current_dir() {
        w.current_dir(d);
    }
    let out = w
        .output()
        .expect("spawn /usr/bin/time (Debian package time)");
    let rss = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (out, rss)
}

/// Writes back every dirty page before a pass: a pass must not pay for the
/// writeback the one before it left (with an odd number of runs and the
/// order alternated, one tool would go first after a drain more often).
fn settle_disk() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn timed(mut cmds: impl FnMut(usize) -> Command, n: usize) -> Pass {
    settle_disk();
    let mut per_call_ms = Vec::with_capacity(n);
    let mut peak_rss_kb = 0;
    let t0 = Instant::now();
    for i in 0..n {
        let mut c = cmds(i);
        let t = Instant::now();
        let (ok, err, rss) = run_measured(&mut c);
        per_call_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        peak_rss_kb = peak_rss_kb.max(rss);
        assert!(ok, "call {i} failed: {err}");
    }
    Pass {
        per_call_ms,
        wall: t0.elapsed(),
        peak_rss_kb,
    }
}

/// Where the tools' settings live, the same way for both: walvault reads a
/// configuration file (`--config`), pgBackRest its own (`--config`); the secrets
/// (S3 keys, the Azure account key) are in the process environment, as a DBA's
/// service unit has them. Every call of either tool starts the same way:
/// `runuser -u postgres -- env ... PROGRAM` (tests/common `pg_command`).
struct Setup {
    root: PathBuf,
    /// The age key pair every walvault repository is encrypted with.
    recipient: String,
    idfile: PathBuf,
    /// The private CA that signed SeaweedFS's HTTPS certificate: both tools verify it.
    ca: PathBuf,
    https_endpoint: String,
    https_port: u16,
    http_endpoint: String,
    /// S3 keys and the Azure account key: the environment of every call.
    secrets: BTreeMap<String, String>,
    azure_endpoint: String,
    azure_repo_base: String,
    access_key: String,
    secret_key: String,
}

/// The repositories the benchmark writes to.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Local,
    S3Https,
    S3Http,
    Azure,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Local => "local dir",
            Backend::S3Https => "S3 HTTPS",
            Backend::S3Http => "S3 HTTP",
            Backend::Azure => "Azure HTTP",
        }
    }
}

impl Setup {
    fn new(root: &Path, weed: &Seaweed, az: &Azurite) -> Setup {
        let idfile = root.join("identity.txt");
        let out = Command::new(walvault_bin())
            .args(["keygen", "-o", idfile.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        chown_pg(&idfile);
        let (https_endpoint, ca) = weed.https_endpoint(root);
        let s3 = weed.walvault_env("x");
        let azure = az.walvault_env(AZ_CONTAINER, "x");
        let mut secrets: BTreeMap<String, String> = base_env()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("WALVAULT_"))
            .collect();
        for k in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            secrets.insert(k.into(), s3[k].clone());
        }
        secrets.insert(
            "AZURE_STORAGE_ACCOUNT_KEY".into(),
            azure["AZURE_STORAGE_ACCOUNT_KEY"].clone(),
        );
        Setup {
            root: root.to_path_buf(),
            recipient: String::from_utf8(out.stdout).unwrap().trim().to_string(),
            idfile,
            ca,
            https_endpoint,
            https_port: weed.https_port(),
            http_endpoint: weed.endpoint(),
            secrets,
            azure_endpoint: azure["WALVAULT_AZURE_ENDPOINT"].clone(),
            azure_repo_base: azure["WALVAULT_REPO"].trim_end_matches("/x").to_string(),
            access_key: weed.access_key.clone(),
            secret_key: weed.secret_key.clone(),
        }
    }

    /// A walvault configuration file for a repository named `name` on `backend`:
    /// zstd-1 and age encryption on, as pgBackRest gets zstd-1 and AES; `extra`
    /// sets more keys (`("push.concurrency", "2")`). One fetch attempt for an
    /// absent file, as pgBackRest's archive-get answers at once.
    fn config(&self, backend: Backend, name: &str, extra: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static FILES: AtomicUsize = AtomicUsize::new(0);
        let repo = match backend {
            Backend::Local => {
                let dir = self.root.join(format!("repo-{name}"));
                std::fs::create_dir_all(&dir).unwrap();
                chown_pg(&dir);
                format!("file://{}", dir.display())
            }
            Backend::S3Https | Backend::S3Http => format!("s3://{BUCKET}/{name}"),
            Backend::Azure => format!("{}/{name}", self.azure_repo_base),
        };
        let q = |v: &str| format!("\"{v}\"");
        let mut keys: Vec<(String, String)> = vec![
            ("repo".into(), q(&repo)),
            ("log_level".into(), q("warn")),
            ("compression.level".into(), "1".into()),
            (
                "encryption.recipients".into(),
                format!("[{}]", q(&self.recipient)),
            ),
            (
                "encryption.identity_file".into(),
                q(&self.idfile.display().to_string()),
            ),
            ("fetch.retries".into(), "1".into()),
        ];
        match backend {
            Backend::Local => {}
            Backend::S3Https | Backend::S3Http => {
                let https = backend == Backend::S3Https;
                let endpoint = if https {
                    &self.https_endpoint
                } else {
                    &self.http_endpoint
                };
                keys.push(("s3.endpoint".into(), q(endpoint)));
                keys.push(("s3.region".into(), q("us-east-1")));
                keys.push(("s3.force_path_style".into(), "true".into()));
                if https {
                    keys.push(("s3.ca_file".into(), q(&self.ca.display().to_string())));
                }
            }
            Backend::Azure => keys.push(("azure.endpoint".into(), q(&self.azure_endpoint))),
        }
        keys.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        // TOML: top-level keys first, then one table per section.
        let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (k, v) in &keys {
            let (section, key) = k.split_once('.').unwrap_or(("", k));
            sections
                .entry(section)
                .or_default()
                .push(format!("{key} = {v}"));
        }
        let mut text = String::new();
        for (section, lines) in sections {
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            text.push_str(&(lines.join("\n") + "\n"));
        }
        let path = self.root.join(format!(
            "walvault-{name}-{}.toml",
            FILES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, text).unwrap();
        chown_pg(&path);
        path
    }

    /// A walvault call, started as every pgBackRest call is.
    fn walvault(&self, conf: &Path, args: &[&str]) -> Command {
        let mut c = pg_command(walvault_bin().to_str().unwrap(), &self.secrets);
        c.arg("--config").arg(conf).args(args);
        c
    }

    /// The archive_command / restore_command text for walvault `verb`.
    fn walvault_line(&self, conf: &Path, verb: &str) -> String {
        format!(
            "\"{}\" --config {} {verb}",
            walvault_bin().display(),
            conf.display()
        )
    }
}

fn main() {
    let a = args();
    let root = pg_tempdir();
    let weed = Seaweed::start_with_https();
    let az = Azurite::start();
    az.create_container(AZ_CONTAINER);
    let s = Setup::new(root.path(), &weed, &az);
    println!(
        "walvault benchmark: zstd-1 and encryption on both tools (walvault age, pgBackRest aes-256-cbc); \
         both over HTTPS to the same SeaweedFS endpoint, certificate verified against the same private CA; \
         both started as `runuser -u postgres -- env ... PROGRAM --config FILE`; \
         runs alternate which tool goes first; every fetched segment compared with the original."
    );
    if a.wants("calls") {
        bench_calls(&a, &s);
    }
    if a.wants("profile") {
        println!("{}", bench_profile(&a, &s));
    }
    if a.wants("drain") {
        println!("{}", bench_drain(&a, &s));
    }
    if a.wants("replay") {
        println!("{}", bench_replay(&a, &s));
    }
    if a.wants("backups") {
        println!("{}", bench_backups(&a, &s));
    }
    if a.wants("incremental") {
        println!("{}", bench_incremental(&a, &s));
    }
    if a.wants("summaries") {
        println!("{}", bench_summaries(&a, &s));
    }
    if a.wants("catalog") {
        println!("{}", bench_catalog(&a, &s, &weed));
    }
    if a.wants("files") {
        println!("{}", bench_files(&a, &s));
    }
    if a.wants("logical") {
        println!("{}", bench_logical(&a, &s));
    }
    if a.wants("receive") {
        println!("{}", bench_receive(&a, &s));
    }
    drop(az);
    drop(weed);
}

/// The Azurite container the Azure rows use.
const AZ_CONTAINER: &str = "bench";

/// Runs the walvault side and the pgBackRest side of one run, walvault first
/// in odd runs (1, 3, ...) and pgBackRest first in even ones; both record into `t`.
fn alternated<T>(
    run: usize,
    t: &mut T,
    mut walvault_side: impl FnMut(&mut T),
    mut pgbackrest_side: impl FnMut(&mut T),
) {
    if run % 2 == 0 {
        walvault_side(t);
        pgbackrest_side(t);
    } else {
        pgbackrest_side(t);
        walvault_side(t);
    }
}

/// The SHA-256 of a file.
fn sha256_file(p: &Path) -> [u8; 32] {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().into()
}

/// Every fetched file (named as its segment, in `dir`) against the original's
/// hash; then the directory goes.
fn compare_fetched(what: &str, dir: &Path, originals: &BTreeMap<String, [u8; 32]>) {
    for (name, want) in originals {
        let got = sha256_file(&dir.join(name));
        assert!(
            got == *want,
            "{what}: fetched {name} differs from the original"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A data directory as restore_command sees it (its own global/pg_control, an
/// empty pg_wal), owned by postgres; returns the pg_wal.
fn pg_wal_dir(root: &Path, name: &str, like: &Path) -> PathBuf {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("global")).unwrap();
    std::fs::create_dir_all(d.join("pg_wal")).unwrap();
    std::fs::copy(like.join("global/pg_control"), d.join("global/pg_control")).unwrap();
    chown_pg(&d);
    d.join("pg_wal")
}

/// Another writer on the same disk while it lives: 256 MiB rewritten in a
/// loop, never synced, so the kernel's writeback runs beside every call (a
/// busy database server's disk; an fsync then waits for more than its own file).
struct DiskBusy {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl DiskBusy {
    fn start(root: &Path) -> DiskBusy {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let path = root.join("disk-busy");
        let (flag, file) = (stop.clone(), path.clone());
        let thread = std::thread::spawn(move || {
            let chunk = vec![0x5au8; 1 << 20];
            while !flag.load(Ordering::Relaxed) {
                let mut f = std::fs::File::create(&file).unwrap();
                for _ in 0..256 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    f.write_all(&chunk).unwrap();
                }
            }
        });
        DiskBusy {
            stop,
            thread: Some(thread),
            path,
        }
    }
}

impl Drop for DiskBusy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A directory the postgres user owns, for one pass's fetched files.
fn fetch_dir(root: &Path, name: &str) -> PathBuf {
    let d = root.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    chown_pg(&d);
    d
}

struct Row {
    label: String,
    ms: Vec<f64>,
    mbps: Vec<f64>,
    p90: Vec<f64>,
    rss_kb: i64,
}

/// One process per call, as PostgreSQL calls archive_command and restore_command.
fn bench_calls(a: &Args, s: &Setup) {
    let root = &s.root;
    eprintln!(
        "making {} segments of real WAL with pgbench ...",
        a.segments
    );
    let (segs, mut src) = make_segments(root, a.segments);
    // One pgBackRest repository per run (stanza-create needs the cluster up).
    let pgbr: Vec<PgBackRest> = (0..a.runs)
        .map(|run| PgBackRest::new(s, &format!("seq{run}"), &src))
        .collect();
    src.stop();
    let raw_mb = segs.len() as f64 * 16.0 * 1.048576;
    let names: Vec<String> = segs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let originals: BTreeMap<String, [u8; 32]> = segs
        .iter()
        .zip(&names)
        .map(|(p, n)| (n.clone(), sha256_file(p)))
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    let mut stored_ratio = 0.0;
    let mut add = |label: String, pass: &mut Pass| {
        let row = match rows.iter_mut().position(|r| r.label == label) {
            Some(i) => &mut rows[i],
            None => {
                rows.push(Row {
                    label,
                    ms: vec![],
                    mbps: vec![],
                    p90: vec![],
                    rss_kb: 0,
                });
                rows.last_mut().unwrap()
            }
        };
        row.ms.push(median(&mut pass.per_call_ms));
        row.p90.push(p90(&mut pass.per_call_ms));
        row.mbps.push(raw_mb / pass.wall.as_secs_f64());
        row.rss_kb = row.rss_kb.max(pass.peak_rss_kb);
    };
    // Every call runs as postgres through the same wrapper, the baseline's too.
    let as_pg = |program: &str| pg_command(program, &BTreeMap::new());

    let mut rows_pgwal: Vec<(String, Pass)> = Vec::new();
    for run in 0..a.runs {
        eprintln!("run {} of {} ...", run + 1, a.runs);
        // Baseline: cp, as in PostgreSQL's documentation (no compression, no fsync).
        let cp_dir = fetch_dir(root, &format!("cp-{run}"));
        let mut p = timed(
            |i| {
                let mut c = as_pg("sh");
                c.arg("-c").arg(format!(
                    "test ! -f '{0}/{1}' && cp '{2}' '{0}/{1}'",
                    cp_dir.display(),
                    names[i],
                    segs[i].display()
                ));
                c
            },
            segs.len(),
        );
        add(format!("{:<28} push", "cp (baseline)"), &mut p);
        let dest = fetch_dir(root, "fetched");
        let mut p = timed(
            |i| {
                let mut c = as_pg("cp");
                c.arg(cp_dir.join(&names[i])).arg(dest.join(&names[i]));
                c
            },
            segs.len(),
        );
        compare_fetched("cp", &dest, &originals);
        add(format!("{:<28} fetch", "cp (baseline)"), &mut p);

        let mut walvault_rows = Vec::new();
        let mut pgbackrest_rows = Vec::new();
        alternated(
            run,
            &mut (),
            |_| {
                for backend in [
                    Backend::S3Https,
                    Backend::S3Http,
                    Backend::Local,
                    Backend::Azure,
                ] {
                    // No prefetch: one call, one segment, as pgBackRest's sync
                    // archive-get (the in-order part measures prefetching).
                    let conf = s.config(
                        backend,
                        &format!("calls-{}-{run}", backend.label().replace(' ', "-")),
                        &[("fetch.prefetch", "0")],
                    );
                    let push = timed(
                        |i| s.walvault(&conf, &["wal-push", segs[i].to_str().unwrap()]),
                        segs.len(),
                    );
                    let dest = fetch_dir(root, "fetched");
                    let fetch = timed(
                        |i| {
                            let to = dest.join(&names[i]);
                            s.walvault(&conf, &["wal-fetch", &names[i], to.to_str().unwrap()])
                        },
                        segs.len(),
                    );
                    compare_fetched(&format!("walvault {}", backend.label()), &dest, &originals);
                    walvault_rows.push((backend, push, fetch));
                }
            },
            |_| {
                let push = timed(
                    |i| pgbr[run].cmd(&["archive-push", segs[i].to_str().unwrap()]),
                    segs.len(),
                );
                let dest = fetch_dir(root, "fetched");
                let fetch = timed(
                    |i| {
                        let to = dest.join(&names[i]);
                        pgbr[run].cmd(&["archive-get", &names[i], to.to_str().unwrap()])
                    },
                    segs.len(),
                );
                compare_fetched("pgBackRest", &dest, &originals);
                pgbackrest_rows.push((push, fetch));
            },
        );
        // restore_command's own shape: %p in a data directory's pg_wal (walvault
        // checks each header against that directory's pg_control, no identity
        // GET), on a quiet disk and beside another writer's writeback.
        for busy in [false, true] {
            let _writer = busy.then(|| DiskBusy::start(root));
            let tag = if busy { "pg_wal, busy disk" } else { "pg_wal" };
            let conf = s.config(
                Backend::S3Https,
                &format!("calls-{}-{run}", Backend::S3Https.label().replace(' ', "-")),
                &[("fetch.prefetch", "0")],
            );
            alternated(
                run,
                &mut rows_pgwal,
                |rows| {
                    let wal = pg_wal_dir(root, "fetched-pgdata", &src.pgdata);
                    let fetch = timed(
                        |i| {
                            let to = wal.join(&names[i]);
                            s.walvault(&conf, &["wal-fetch", &names[i], to.to_str().unwrap()])
                        },
                        segs.len(),
                    );
                    compare_fetched("walvault into pg_wal", &wal, &originals);
                    rows.push((format!("walvault S3 HTTPS → {tag}"), fetch));
                },
                |rows| {
                    let wal = pg_wal_dir(root, "fetched-pgdata", &src.pgdata);
                    let fetch = timed(
                        |i| {
                            let to = wal.join(&names[i]);
                            pgbr[run].cmd(&["archive-get", &names[i], to.to_str().unwrap()])
                        },
                        segs.len(),
                    );
                    compare_fetched("pgBackRest into pg_wal", &wal, &originals);
                    rows.push((format!("pgBackRest sync → {tag}"), fetch));
                },
            );
        }
        for (label, mut fetch) in rows_pgwal.drain(..) {
            add(format!("{label:<28} fetch"), &mut fetch);
        }
        for (backend, mut push, mut fetch) in walvault_rows {
            let label = format!("walvault {}", backend.label());
            add(format!("{label:<28} push"), &mut push);
            add(format!("{label:<28} fetch"), &mut fetch);
            if backend == Backend::Local {
                let stored: u64 =
                    std::fs::read_dir(root.join(format!("repo-calls-local-dir-{run}/wal")))
                        .unwrap()
                        .filter_map(|e| e.ok())
                        .map(|e| e.metadata().unwrap().len())
                        .sum();
                stored_ratio = stored as f64 / (raw_mb * 1e6);
            }
        }
        for (mut push, mut fetch) in pgbackrest_rows {
            add(
                format!("{:<28} push", "pgBackRest S3 HTTPS (sync)"),
                &mut push,
            );
            add(
                format!("{:<28} fetch", "pgBackRest S3 HTTPS (sync)"),
                &mut fetch,
            );
        }
    }

    println!(
        "\nper call: {} real 16 MiB WAL segments from pgbench, one process per call (walvault's fetch without prefetch, as pgBackRest's sync archive-get); {} runs",
        segs.len(),
        a.runs
    );
    println!(
        "walvault's stored size: {:.1}% of raw WAL\n",
        stored_ratio * 100.0
    );
    println!(
        "{:<34} {:>14} {:>10} {:>10} {:>12} {:>14}",
        "", "median ms/seg", "p90 ms", "raw MB/s", "x cp time", "peak RSS MiB"
    );
    let mut med = |label: &str| -> f64 {
        median(
            &mut rows
                .iter_mut()
                .find(|r| r.label == label)
                .unwrap_or_else(|| panic!("no row {label}"))
                .ms,
        )
    };
    let push_base = med(&format!("{:<28} push", "cp (baseline)"));
    let fetch_base = med(&format!("{:<28} fetch", "cp (baseline)"));
    let wp = med(&format!("{:<28} push", "walvault S3 HTTPS"));
    let pp = med(&format!("{:<28} push", "pgBackRest S3 HTTPS (sync)"));
    let wf = med(&format!("{:<28} fetch", "walvault S3 HTTPS"));
    let pf = med(&format!("{:<28} fetch", "pgBackRest S3 HTTPS (sync)"));
    let (ap, af) = (
        med(&format!("{:<28} push", "walvault Azure HTTP")),
        med(&format!("{:<28} fetch", "walvault Azure HTTP")),
    );
    let (hp, hf) = (
        med(&format!("{:<28} push", "walvault S3 HTTP")),
        med(&format!("{:<28} fetch", "walvault S3 HTTP")),
    );
    let pg_wal_ratios: Vec<(&str, f64)> = ["pg_wal", "pg_wal, busy disk"]
        .into_iter()
        .map(|tag| {
            let w = med(&format!(
                "{:<28} fetch",
                format!("walvault S3 HTTPS → {tag}")
            ));
            let p = med(&format!("{:<28} fetch", format!("pgBackRest sync → {tag}")));
            (tag, p / w)
        })
        .collect();
    for r in rows.iter_mut() {
        let ms = median(&mut r.ms);
        let b = if r.label.ends_with("push") {
            push_base
        } else {
            fetch_base
        };
        println!(
            "{:<34} {:>14.1} {:>10.1} {:>10.0} {:>12.2} {:>14.1}",
            r.label,
            ms,
            median(&mut r.p90),
            median(&mut r.mbps),
            ms / b,
            r.rss_kb as f64 / 1024.0
        );
    }
    println!(
        "\nwalvault against pgBackRest (S3 over HTTPS, one process per call): push {:.2}x faster, fetch {:.2}x faster",
        pp / wp,
        pf / wf
    );
    for (tag, ratio) in pg_wal_ratios {
        println!(
            "walvault against pgBackRest, fetched into a data directory's {tag}: fetch {ratio:.2}x faster"
        );
    }
    println!(
        "walvault over plain HTTP against HTTPS: push {:.2}x the time, fetch {:.2}x the time; on Azure (Azurite, HTTP) against S3 HTTP: push {:.2}x, fetch {:.2}x",
        hp / wp,
        hf / wf,
        ap / hp,
        af / hf
    );
}

/// Runs a command under GNU time; returns (seconds, peak RSS KiB, stdout); panics on failure.
/// Uses `bytes` of memory once, page by page, then frees it. This machine's
/// memory is slow the first time each page is used (about 100 MB/s against
/// GB/s after: a virtual machine whose memory is mapped on first touch), so
/// the first restore to write the page cache paid it and the tool going
/// second got the pages the first freed: walvault always restored first and
/// took 3 to 5 times longer than the same restore from a warm machine.
fn touch_memory(bytes: usize) {
    let t = Instant::now();
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    drop(v);
    eprintln!(
        "  {:.1} GB of memory used once before the timed restores ({:.1} s)",
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
}

fn timed_ok(c: Command, what: &str) -> (f64, i64, String) {
    // Earlier steps' dirty pages written out first: no step (of either tool)
    // pays for another's writeback.
    settle_disk();
    let t = Instant::now();
    let (out, rss) = measure(&c);
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, rss, String::from_utf8_lossy(&out.stdout).to_string())
}

/// Rows of (label, seconds per run, peak RSS KiB).
#[derive(Default)]
struct Table(Vec<(String, Vec<f64>, i64)>);

impl Table {
    fn add(&mut self, label: &str, secs: f64, rss: i64) {
        match self.0.iter_mut().find(|r| r.0 == label) {
            Some(r) => {
                r.1.push(secs);
                r.2 = r.2.max(rss);
            }
            None => self.0.push((label.to_string(), vec![secs], rss)),
        }
    }

    fn median(&mut self, label: &str) -> f64 {
        median(
            &mut self
                .0
                .iter_mut()
                .find(|r| r.0 == label)
                .unwrap_or_else(|| panic!("no row {label}"))
                .1,
        )
    }

    /// The fastest of some rows: a tool "at its best settings".
    fn best(&mut self, labels: &[&str]) -> (String, f64) {
        labels
            .iter()
            .map(|l| (l.to_string(), self.median(l)))
            .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap())
            .unwrap()
    }
}

/// backup-push and a full recover of a pgbench database, beside pg_basebackup to
/// a local directory and pgBackRest backup and restore to the same S3 endpoint.
fn bench_backups(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let mut src = Cluster::init(root, "backup-src");
    let confs: Vec<(Backend, PathBuf)> = [
        Backend::S3Https,
        Backend::S3Http,
        Backend::Local,
        Backend::Azure,
    ]
    .into_iter()
    .map(|b| {
        (
            b,
            s.config(b, &format!("backups-{}", b.label().replace(' ', "-")), &[]),
        )
    })
    .collect();
    // The source archives into every repository (pgBackRest's backup waits for its own archive).
    let walvault_confs: Vec<&Path> = confs.iter().map(|(_, c)| c.as_path()).collect();
    let pgbr = archiving_pgbench(a, s, &mut src, "backup", &walvault_confs);
    let db_mb: f64 = src
        .psql("select sum(pg_database_size(oid)) / 1e6 from pg_database")
        .parse()
        .unwrap();
    let rows_want = src.psql("select sum(abalance), count(*) from pgbench_accounts");

    let mut t = Table::default();
    for run in 0..a.runs {
        eprintln!("backup run {} of {} ...", run + 1, a.runs);
        let dest = root.join(format!("basebackup-{run}"));
        let t0 = Instant::now();
        src.basebackup(&dest);
        t.add(
            "pg_basebackup (baseline), local dir",
            t0.elapsed().as_secs_f64(),
            0,
        );
        std::fs::remove_dir_all(&dest).unwrap();
        alternated(
            run,
            &mut t,
            |t| {
                for (backend, conf) in &confs {
                    let name = backend.label();
                    let mut c =
                        pg_command(walvault_bin().to_str().unwrap(), &src.pg_env(&s.secrets));
                    c.arg("--config").arg(conf).args(["backup-push", "--fast"]);
                    let (secs, rss, _) = timed_ok(c, "backup-push");
                    t.add(&format!("walvault backup-push, {name}"), secs, rss);
                    let mut b =
                        Cluster::at(root, &format!("restored-{run}-{}", name.replace(' ', "")));
                    let owned = b.recover_args();
                    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
                    let (secs, rss, text) = timed_ok(s.walvault(conf, &args), "recover");
                    b.adopt();
                    assert_eq!(
                        b.psql("select sum(abalance), count(*) from pgbench_accounts"),
                        rows_want,
                        "walvault recover, {name}: not the source's rows"
                    );
                    b.stop();
                    t.add(&format!("walvault recover (latest), {name}"), secs, rss);
                    if let Some(line) = text.lines().find(|l| l.starts_with("recovered:")) {
                        eprintln!("  {name}: {line}");
                    }
                    std::fs::remove_dir_all(&b.pgdata).unwrap();
                }
            },
            |t| {
                for pm in [2, 4] {
                    let pmx = format!("--process-max={pm}");
                    let (secs, rss, _) = timed_ok(
                        pgbr.cmd(&[&pmx, "--start-fast", "--type=full", "backup"]),
                        "pgbackrest backup",
                    );
                    t.add(&format!("pgBackRest backup, process-max {pm}"), secs, rss);
                    let mut b = Cluster::at(root, &format!("pgbr-restored-{run}-{pm}"));
                    std::fs::create_dir(&b.pgdata).unwrap();
                    std::fs::set_permissions(
                        &b.pgdata,
                        std::os::unix::fs::PermissionsExt::from_mode(0o700),
                    )
                    .unwrap();
                    chown_pg(&b.pgdata);
                    let t0 = Instant::now();
                    let pg1 = format!("--pg1-path={}", b.pgdata.display());
                    let (_, rss, _) =
                        timed_ok(pgbr.cmd(&[&pmx, &pg1, "restore"]), "pgbackrest restore");
                    b.conf("archive_mode = off");
                    // The restore_command pgBackRest wrote, made asynchronous (its
                    // prefetch, queue of 16 segments as walvault's); the last line wins.
                    let auto = b.pgdata.join("postgresql.auto.conf");
                    let mut text = std::fs::read_to_string(&auto).unwrap();
                    text.push_str(&format!(
                        "\nrestore_command = '{}'\n",
                        pgbr.command_line(
                            &format!("--archive-async {pmx} {pg1}"),
                            "archive-get %f \"%p\""
                        )
                    ));
                    std::fs::write(&auto, text).unwrap();
                    b.start_opts(&base_env(), false);
                    b.wait_promoted(Duration::from_secs(1800));
                    t.add(
                        &format!("pgBackRest restore + recovery, process-max {pm}"),
                        t0.elapsed().as_secs_f64(),
                        rss,
                    );
                    assert_eq!(
                        b.psql("select sum(abalance), count(*) from pgbench_accounts"),
                        rows_want,
                        "pgBackRest restore: not the source's rows"
                    );
                    b.stop();
                    std::fs::remove_dir_all(&b.pgdata).unwrap();
                }
            },
        );
    }
    src.stop();
    let base = t.median("pg_basebackup (baseline), local dir");
    let mut out = format!(
        "\nbase backups: pgbench scale {} ({db_mb:.0} MB of databases); walvault at its defaults (2 parts at once, \
         prefetch 16 in recovery), pgBackRest at process-max 2 and 4 (restore_command async, queue 16 segments); {} runs\n\n\
         {:<48} {:>10} {:>10} {:>14} {:>14}\n",
        a.scale, a.runs, "", "median s", "MB/s", "x basebackup", "peak RSS MiB"
    );
    for r in t.0.iter_mut() {
        let m = median(&mut r.1);
        let rss = if r.2 > 0 {
            format!("{:.1}", r.2 as f64 / 1024.0)
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "{:<48} {:>10.1} {:>10.0} {:>14.2} {:>14}\n",
            r.0,
            m,
            db_mb / m,
            m / base,
            rss
        ));
    }
    let wb = t.median("walvault backup-push, S3 HTTPS");
    let wr = t.median("walvault recover (latest), S3 HTTPS");
    let (pb2, pr2) = (
        t.median("pgBackRest backup, process-max 2"),
        t.median("pgBackRest restore + recovery, process-max 2"),
    );
    let (best_b, pbb) = t.best(&[
        "pgBackRest backup, process-max 2",
        "pgBackRest backup, process-max 4",
    ]);
    let (best_r, prb) = t.best(&[
        "pgBackRest restore + recovery, process-max 2",
        "pgBackRest restore + recovery, process-max 4",
    ]);
    out.push_str(&format!(
        "\nwalvault (2 at once, S3 HTTPS) against pgBackRest process-max 2: backup {:.2}x faster, restore and recovery {:.2}x faster\n\
         walvault (defaults, S3 HTTPS) against pgBackRest at its best ({best_b}; {best_r}): backup {:.2}x faster, restore and recovery {:.2}x faster\n",
        pb2 / wb,
        pr2 / wr,
        pbb / wb,
        prb / wr,
    ));
    out.push_str(&format!(
        "walvault on Azure (Azurite, HTTP) against S3 HTTP: backup {:.2}x the time, restore and recovery {:.2}x the time\n",
        t.median("walvault backup-push, Azure HTTP") / t.median("walvault backup-push, S3 HTTP"),
        t.median("walvault recover (latest), Azure HTTP") / t.median("walvault recover (latest), S3 HTTP"),
    ));
    out
}

/// A full backup, then about 1% of the pages changed, then an incremental
/// one: time and stored bytes, walvault beside pgBackRest's `--type=incr`;
/// then restoring the incremental into an empty directory against a delta
/// restore over a copy restored from the full backup (the lagging replica).
fn bench_incremental(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let mut src = Cluster::init(root, "incr-src");
    let conf = s.config(Backend::S3Https, "incremental", &[]);
    let pgbr = archiving_pgbench(a, s, &mut src, "incr", &[&conf]);
    let pages: f64 = src
        .psql("select sum(pg_relation_size(oid)) / 8192 from pg_class where relkind in ('r', 'i')")
        .parse()
        .unwrap();
    let db_mb: f64 = src
        .psql("select sum(pg_database_size(oid)) / 1e6 from pg_database")
        .parse()
        .unwrap();
    let stored = |id: &str| -> u64 {
        let v = manifest_json_with(s, &conf, id);
        v["stored_bytes"].as_u64().unwrap()
    };
    let pgbr_stored = || -> u64 {
        let out = pgbr.cmd(&["info", "--output=json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let last = v[0]["backup"].as_array().unwrap().last().unwrap().clone();
        last["info"]["repository"]["delta"].as_u64().unwrap()
    };
    let mut t = Table::default();
    let mut bytes: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut changed_pct = Vec::new();
    for run in 0..a.runs {
        eprintln!("incremental run {} of {} ...", run + 1, a.runs);
        let mut wal_mb = 0.0;
        let ids = full_then_incremental(run, s, &src, &conf, &pgbr, &mut t, |full| {
            bytes.entry("walvault full").or_default().push(stored(full));
            bytes
                .entry("pgBackRest full")
                .or_default()
                .push(pgbr_stored());
            // About 1% of the pages: random pgbench updates, each touching a
            // page of pgbench_accounts, its index and the small tables.
            let before = src.psql("select pg_current_wal_lsn()");
            src.pgbench(&["-n", "-c", "2", "-t", &format!("{}", a.scale * 6)]);
            src.psql("checkpoint");
            wal_mb = src
                .psql(&format!("select (pg_current_wal_lsn() - '{before}') / 1e6"))
                .parse()
                .unwrap();
        });
        let m = manifest_json_with(s, &conf, &ids.1);
        assert_eq!(m["parent"], ids.0.as_str(), "an incremental on the full");
        bytes
            .entry("walvault incremental")
            .or_default()
            .push(stored(&ids.1));
        bytes
            .entry("pgBackRest incr")
            .or_default()
            .push(pgbr_stored());
        changed_pct.push(100.0 * m["raw_bytes"].as_f64().unwrap() / (pages.max(1.0) * 8192.0));
        eprintln!("  {wal_mb:.0} MB of WAL between the two backups");

        // Restores of the incremental: into an empty directory, and delta
        // over a copy restored from the full backup.
        touch_memory((db_mb * 1e6 * 4.0) as usize);
        let empty = root.join(format!("incr-full-restore-{run}"));
        let (secs, rss) = timed_recover(s, &conf, &empty, &ids.1, false);
        t.add(
            "walvault recover of the incremental, empty directory",
            secs,
            rss,
        );
        let lagging = root.join(format!("incr-delta-restore-{run}"));
        timed_recover(s, &conf, &lagging, &ids.0, false);
        let (secs, rss) = timed_recover(s, &conf, &lagging, &ids.1, true);
        t.add("walvault recover --delta over the full's copy", secs, rss);
        let same = files_equal(&empty, &lagging);
        assert!(
            same.is_empty(),
            "delta restore differs from the full restore: {same:?}"
        );
        for d in [&empty, &lagging] {
            std::fs::remove_dir_all(d).unwrap();
        }
        let pgbr_restore =
            |t: &mut Table, dir: &Path, set: Option<&str>, delta: bool, label: &str| {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .unwrap();
                chown_pg(dir);
                let pg1 = format!("--pg1-path={}", dir.display());
                let mut args = vec![pg1.as_str(), "--type=immediate"];
                let set_arg = set.map(|s| format!("--set={s}"));
                if let Some(a) = &set_arg {
                    args.push(a);
                }
                if delta {
                    args.push("--delta");
                }
                args.push("restore");
                let (secs, rss, _) = timed_ok(pgbr.cmd(&args), "pgbackrest restore");
                if !label.is_empty() {
                    t.add(label, secs, rss);
                }
            };
        let info = pgbr.cmd(&["info", "--output=json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let labels: Vec<String> = v[0]["backup"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["label"].as_str().unwrap().to_string())
            .collect();
        let (pgbr_full, pgbr_incr) = (&labels[labels.len() - 2], &labels[labels.len() - 1]);
        let d1 = root.join(format!("pgbr-incr-restore-{run}"));
        pgbr_restore(
            &mut t,
            &d1,
            Some(pgbr_incr),
            false,
            "pgBackRest restore of the incr, empty directory",
        );
        let d2 = root.join(format!("pgbr-delta-restore-{run}"));
        pgbr_restore(&mut t, &d2, Some(pgbr_full), false, "");
        pgbr_restore(
            &mut t,
            &d2,
            Some(pgbr_incr),
            true,
            "pgBackRest restore --delta over the full's copy",
        );
        for d in [&d1, &d2] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
    src.stop();
    let med = |v: &mut Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut out = format!(
        "\nincremental backups: pgbench scale {} ({db_mb:.0} MB of databases, {pages:.0} pages of tables and indexes), \
         {} pgbench transactions between the full and the incremental; S3 HTTPS, both tools at 2 at once; {} runs\n\n\
         {:<58} {:>10} {:>14} {:>14}\n",
        a.scale, a.scale * 12, a.runs, "", "median s", "peak RSS MiB", "stored MiB"
    );
    let stored_of = |label: &str| -> Option<&str> {
        [
            ("walvault backup-push --full", "walvault full"),
            ("walvault backup-push --incremental", "walvault incremental"),
            ("pgBackRest backup --type=full", "pgBackRest full"),
            ("pgBackRest backup --type=incr", "pgBackRest incr"),
        ]
        .iter()
        .find(|(l, _)| *l == label)
        .map(|(_, k)| *k)
    };
    for r in t.0.iter_mut() {
        let m = median(&mut r.1);
        let st = stored_of(&r.0)
            .map(|k| format!("{:.1}", med(bytes.get_mut(k).unwrap()) as f64 / 1048576.0))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<58} {:>10.2} {:>14.1} {:>14}
",
            r.0,
            m,
            r.2 as f64 / 1024.0,
            st
        ));
    }
    let (wf, wi) = (
        t.median("walvault backup-push --full"),
        t.median("walvault backup-push --incremental"),
    );
    let (bf, bi) = (
        med(bytes.get_mut("walvault full").unwrap()) as f64,
        med(bytes.get_mut("walvault incremental").unwrap()) as f64,
    );
    let (pi, pbi) = (
        t.median("pgBackRest backup --type=incr"),
        med(bytes.get_mut("pgBackRest incr").unwrap()) as f64,
    );
    let (rf, rd) = (
        t.median("walvault recover of the incremental, empty directory"),
        t.median("walvault recover --delta over the full's copy"),
    );
    let prd = t.median("pgBackRest restore --delta over the full's copy");
    out.push_str(&format!(
        "\nwalvault incremental: {:.1}% of the full's stored bytes (target <= 3%), {:.1}% of its time (target <= 20%); \
         what it read into its parts (changed blocks and files) {:.1}% of the tables' and indexes' bytes\n\
         against pgBackRest --type=incr: {:.2}x faster, {:.2}x the stored bytes\n\
         delta restore: {:.1}% of the restore into an empty directory (target <= 25%); against pgBackRest --delta {:.2}x faster\n",
        100.0 * bi / bf,
        100.0 * wi / wf,
        median(&mut changed_pct),
        pi / wi,
        bi / pbi,
        100.0 * rd / rf,
        prd / rd,
    ));
    out
}

/// `backup-push --KIND` of `src` into `conf`'s repository, timed into `t`; its id.
fn timed_backup(s: &Setup, src: &Cluster, conf: &Path, t: &mut Table, kind: &str) -> String {
    let mut c = pg_command(walvault_bin().to_str().unwrap(), &src.pg_env(&s.secrets));
    c.arg("--config")
        .arg(conf)
        .args(["backup-push", "--fast", &format!("--{kind}")]);
    let (secs, rss, out) = timed_ok(c, "backup-push");
    t.add(&format!("walvault backup-push --{kind}"), secs, rss);
    out.trim().to_string()
}

/// A full backup with each tool, then `change` (given walvault's full
/// backup), then an incremental with each; which tool goes first alternates
/// by run. Timed into `t`; returns walvault's two backup ids.
fn full_then_incremental(
    run: usize,
    s: &Setup,
    src: &Cluster,
    conf: &Path,
    pgbr: &PgBackRest,
    t: &mut Table,
    change: impl FnOnce(&str),
) -> (String, String) {
    let mut ids = (String::new(), String::new());
    let backup = |t: &mut Table, kind: &str| timed_backup(s, src, conf, t, kind);
    let pgbr_backup = |t: &mut Table, kind: &str| timed_pgbr_backup(pgbr, t, kind);
    alternated(
        run,
        t,
        |t| ids.0 = backup(t, "full"),
        |t| pgbr_backup(t, "full"),
    );
    change(&ids.0);
    alternated(
        run,
        t,
        |t| ids.1 = backup(t, "incremental"),
        |t| pgbr_backup(t, "incr"),
    );
    ids
}

/// walvault `recover --target immediate` of backup `id` into `dir` (with
/// `--delta`, over what is there), timed: seconds and peak RSS.
fn timed_recover(s: &Setup, conf: &Path, dir: &Path, id: &str, delta: bool) -> (f64, i64) {
    let dir = dir.display().to_string();
    let mut args = vec![
        "recover",
        "--pgdata",
        &dir,
        "--backup",
        id,
        "--target",
        "immediate",
    ];
    if delta {
        args.push("--delta");
    }
    let (secs, rss, _) = timed_ok(s.walvault(conf, &args), "recover");
    (secs, rss)
}

/// pgBackRest `backup --type=KIND`, timed into `t`.
fn timed_pgbr_backup(pgbr: &PgBackRest, t: &mut Table, kind: &str) {
    let (secs, rss, _) = timed_ok(
        pgbr.cmd(&["--start-fast", &format!("--type={kind}"), "backup"]),
        "pgbackrest backup",
    );
    t.add(&format!("pgBackRest backup --type={kind}"), secs, rss);
}

/// Starts `src` archiving into every walvault repository of `confs` and into
/// pgBackRest's (whose backup waits for its own archive), then fills it with
/// a pgbench database of the benchmark's scale.
fn archiving_pgbench(
    a: &Args,
    s: &Setup,
    src: &mut Cluster,
    stanza: &str,
    confs: &[&Path],
) -> PgBackRest {
    src.conf("max_wal_size = 4GB");
    src.start(&s.secrets);
    let pgbr = PgBackRest::new(s, stanza, src);
    let mut archive: Vec<String> = confs
        .iter()
        .map(|c| s.walvault_line(c, "wal-push %p"))
        .collect();
    archive.push(pgbr.command_line("", "archive-push %p"));
    src.psql("alter system set archive_mode = on");
    src.psql(&format!(
        "alter system set archive_command = '{}'",
        archive.join(" && ").replace('\'', "''")
    ));
    src.stop();
    src.start(&s.secrets);
    eprintln!("making a pgbench database of scale {} ...", a.scale);
    src.pgbench(&["-i", "-s", &a.scale.to_string(), "-q"]);
    src.psql("checkpoint");
    pgbr
}

/// The manifest of backup `id` (backup-list --json) of the repository in `conf`.
fn manifest_json_with(s: &Setup, conf: &Path, id: &str) -> serde_json::Value {
    let out = s
        .walvault(conf, &["backup-list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "backup-list: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed"))
}

/// The relative paths whose contents differ between two directory trees.
fn files_equal(a: &Path, b: &Path) -> Vec<String> {
    let list = |root: &Path| -> BTreeMap<String, [u8; 32]> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() && rel != "postgresql.auto.conf" {
                    out.insert(rel, sha256_file(&e.path()));
                }
            }
        }
        out
    };
    let (x, y) = (list(a), list(b));
    x.keys()
        .chain(y.keys())
        .filter(|k| x.get(*k) != y.get(*k))
        .cloned()
        .collect()
}

/// pgBackRest beside walvault: the same S3 server over HTTPS with the same CA
/// verified (it matches the host against DNS names only: the test certificate
/// names 127.0.0.1 both ways), zstd-1, repository encryption on (as walvault's age), run as postgres;
/// process-max 2 and a prefetch queue of 16 segments (walvault's defaults of 2
/// backup parts at once and 16 segments prefetched); rows at other settings pass
/// options on the command line.
struct PgBackRest {
    conf: PathBuf,
    stanza: String,
}

impl PgBackRest {
    /// Writes the configuration for `pg` (running: stanza-create connects).
    fn new(s: &Setup, name: &str, pg: &Cluster) -> PgBackRest {
        let dir = s.root.join(format!("pgbackrest-{name}"));
        for d in ["log", "lock", "spool"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let conf = dir.join("pgbackrest.conf");
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-type=s3\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={}\n\
                 repo1-storage-ca-file={}\nrepo1-s3-bucket={BUCKET}\nrepo1-s3-region=us-east-1\n\
                 repo1-s3-key={}\nrepo1-s3-key-secret={}\nrepo1-s3-uri-style=path\nrepo1-path=/pgbr-{name}\n\
                 repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=walvault-bench-passphrase\n\
                 compress-type=zst\ncompress-level=1\nprocess-max=2\n\
                 log-path={dir}/log\nlock-path={dir}/lock\nspool-path={dir}/spool\n\
                 log-level-console=warn\nlog-level-file=off\narchive-get-queue-max=256MB\n\n\
                 [{name}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\n",
                s.https_port,
                s.ca.display(),
                s.access_key,
                s.secret_key,
                pg.pgdata.display(),
                pg.sockdir.display(),
                pg.port,
                dir = dir.display()
            ),
        )
        .unwrap();
        chown_pg(&dir);
        let p = PgBackRest {
            conf,
            stanza: name.to_string(),
        };
        let out = p.cmd(&["stanza-create"]).output().unwrap();
        assert!(
            out.status.success(),
            "pgbackrest stanza-create: {}",
            stderr(&out)
        );
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = pg_command("/usr/bin/pgbackrest", &BTreeMap::new());
        c.arg(format!("--config={}", self.conf.display()))
            .arg(format!("--stanza={}", self.stanza))
            .args(args);
        c
    }

    /// The archive_command / restore_command text.
    fn command_line(&self, extra: &str, verb: &str) -> String {
        format!(
            "/usr/bin/pgbackrest --config={} --stanza={} {extra} {verb}",
            self.conf.display(),
            self.stanza
        )
    }

    fn spool(&self) -> PathBuf {
        self.conf.parent().unwrap().join("spool")
    }
}

/// Backlog drain (PostgreSQL's archiver with a backlog of `n` segments) and
/// in-order fetch of the same segments, walvault against pgBackRest async.
fn bench_drain(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let n = a.drain;
    let mut d = Cluster::init(root, "drain");
    d.conf("archive_mode = on\narchive_command = '/bin/false'\nmax_wal_size = 16GB\ncheckpoint_timeout = 1h\nmin_wal_size = 8GB");
    d.start(&s.secrets);
    eprintln!("making a backlog of {n} segments of real WAL ...");
    while ready_files(&d.pgdata).len() < n {
        d.pgbench(&["-i", "-s", "30", "-q"]);
    }
    d.psql("select pg_switch_wal()");
    let backlog: Vec<String> = ready_files(&d.pgdata)
        .into_iter()
        .filter(|f| f.len() == 24)
        .take(n)
        .collect();
    let originals: BTreeMap<String, [u8; 32]> = backlog
        .iter()
        .map(|f| (f.clone(), sha256_file(&d.pgdata.join("pg_wal").join(f))))
        .collect();
    let raw_mb = backlog.len() as f64 * 16.777216;
    let status = d.pgdata.join("pg_wal/archive_status");
    // Every other .ready file (beyond the backlog) becomes .done: not measured.
    for f in ready_files(&d.pgdata) {
        if !backlog.contains(&f) {
            std::fs::rename(
                status.join(format!("{f}.ready")),
                status.join(format!("{f}.done")),
            )
            .unwrap();
        }
    }
    let set_command = |cmd: &str| {
        d.psql(&format!(
            "alter system set archive_command = '{}'",
            cmd.replace('\'', "''")
        ));
        d.psql("select pg_reload_conf()");
    };
    // Drains the backlog through `cmd`: the archiver's wall time until every
    // .ready file of the backlog is .done.
    let drain = |cmd: &str| -> f64 {
        set_command("/bin/false");
        for f in &backlog {
            let done = status.join(format!("{f}.done"));
            if done.exists() {
                std::fs::rename(&done, status.join(format!("{f}.ready"))).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        settle_disk();
        let t = Instant::now();
        set_command(cmd);
        d.psql("select pg_switch_wal()");
        while backlog
            .iter()
            .any(|f| status.join(format!("{f}.ready")).exists())
        {
            assert!(
                t.elapsed() < Duration::from_secs(1800),
                "drain stuck: {}",
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed().as_secs_f64()
    };

    let mut drains = Table::default();
    let mut fetches = Table::default();
    // Where restore_command would run: a pg_wal beside the cluster's pg_control
    // (walvault serves a prefetched copy only to the cluster it belongs to).
    let fake = root.join("drain-fake");
    std::fs::create_dir_all(fake.join("pg_wal")).unwrap();
    std::fs::create_dir_all(fake.join("global")).unwrap();
    std::fs::copy(
        d.pgdata.join("global/pg_control"),
        fake.join("global/pg_control"),
    )
    .unwrap();
    chown_pg(&fake);
    // One in-order pass: every segment fetched into pg_wal/RECOVERYXLOG (where
    // walvault's spool sits beside it), moved aside at once, all compared after.
    let fetch_pass = |label: &str, call: &dyn Fn(&str, &Path) -> Command, fetches: &mut Table| {
        let _ = std::fs::remove_dir_all(fake.join("pg_wal/walvault_prefetch"));
        let kept = fetch_dir(root, "drain-fetched");
        let dest = fake.join("pg_wal/RECOVERYXLOG");
        let mut rss = 0;
        settle_disk();
        let t = Instant::now();
        for f in &backlog {
            let mut c = call(f, &dest);
            c.current_dir(&fake);
            let (ok, err, r) = run_measured(&mut c);
            assert!(ok, "{label} {f}: {err}");
            std::fs::rename(&dest, kept.join(f)).unwrap();
            rss = rss.max(r);
        }
        fetches.add(label, t.elapsed().as_secs_f64(), rss);
        compare_fetched(label, &kept, &originals);
    };
    for run in 0..a.runs {
        eprintln!("drain run {} of {} ...", run + 1, a.runs);
        let wv2 = s.config(
            Backend::S3Https,
            &format!("drain2-{run}"),
            &[("push.concurrency", "2")],
        );
        let wv4 = s.config(Backend::S3Https, &format!("drain4-{run}"), &[]);
        let pgbr2 = PgBackRest::new(s, &format!("drain2r{run}"), &d);
        let pgbr4 = PgBackRest::new(s, &format!("drain4r{run}"), &d);
        alternated(
            run,
            &mut drains,
            |drains| {
                drains.add(
                    "walvault, 2 uploads at once",
                    drain(&s.walvault_line(&wv2, "wal-push %p")),
                    0,
                );
                drains.add(
                    "walvault, 4 uploads at once (default)",
                    drain(&s.walvault_line(&wv4, "wal-push %p")),
                    0,
                );
            },
            |drains| {
                drains.add(
                    "pgBackRest async, process-max 2",
                    drain(&pgbr2.command_line("--archive-async", "archive-push %p")),
                    0,
                );
                drains.add(
                    "pgBackRest async, process-max 4",
                    drain(
                        &pgbr4.command_line("--archive-async --process-max=4", "archive-push %p"),
                    ),
                    0,
                );
            },
        );
        // Recovery's side: the same segments fetched in order, one call each,
        // from the repositories the default rows filled.
        let repo = format!("drain4-{run}");
        let wv_nopf2 = s.config(Backend::S3Https, &repo, &[("fetch.prefetch", "0")]);
        let wv_pf2b = s.config(
            Backend::S3Https,
            &repo,
            &[
                ("fetch.prefetch", "16"),
                ("fetch.prefetch_concurrency", "2"),
            ],
        );
        let _ = std::fs::remove_dir_all(pgbr4.spool().join("archive"));
        alternated(
            run,
            &mut fetches,
            |fetches| {
                fetch_pass(
                    "walvault, no prefetch",
                    &|f, dest| s.walvault(&wv_nopf2, &["wal-fetch", f, dest.to_str().unwrap()]),
                    fetches,
                );
                fetch_pass(
                    "walvault, prefetch 16, 2 at once",
                    &|f, dest| s.walvault(&wv_pf2b, &["wal-fetch", f, dest.to_str().unwrap()]),
                    fetches,
                );
                fetch_pass(
                    "walvault, prefetch 16, 4 at once (default)",
                    &|f, dest| s.walvault(&wv4, &["wal-fetch", f, dest.to_str().unwrap()]),
                    fetches,
                );
            },
            |fetches| {
                fetch_pass(
                    "pgBackRest archive-get, sync",
                    &|f, dest| pgbr4.cmd(&["archive-get", f, dest.to_str().unwrap()]),
                    fetches,
                );
                for pm in [2, 4] {
                    let _ = std::fs::remove_dir_all(pgbr4.spool().join("archive"));
                    let pmx = format!("--process-max={pm}");
                    fetch_pass(
                        &format!("pgBackRest archive-get, async queue 16, process-max {pm}"),
                        &|f, dest| {
                            pgbr4.cmd(&[
                                "--archive-async",
                                &pmx,
                                "archive-get",
                                f,
                                dest.to_str().unwrap(),
                            ])
                        },
                        fetches,
                    );
                }
            },
        );
    }
    d.stop();
    let mut out = format!(
        "\nbacklog drain: {} segments ({raw_mb:.0} MB of real WAL) .ready, PostgreSQL's archiver until all are .done (lookahead 8 for walvault); {} runs\n\n{:<48} {:>10} {:>10}\n",
        backlog.len(),
        a.runs,
        "",
        "median s",
        "MB/s",
    );
    for r in drains.0.iter_mut() {
        let m = median(&mut r.1);
        out.push_str(&format!("{:<48} {:>10.1} {:>10.0}\n", r.0, m, raw_mb / m));
    }
    let (w2, p2) = (
        drains.median("walvault, 2 uploads at once"),
        drains.median("pgBackRest async, process-max 2"),
    );
    let w4 = drains.median("walvault, 4 uploads at once (default)");
    let (best, pb) = drains.best(&[
        "pgBackRest async, process-max 2",
        "pgBackRest async, process-max 4",
    ]);
    out.push_str(&format!(
        "\nwalvault 2 at once against pgBackRest process-max 2: {:.2}x faster; walvault default against pgBackRest at its best ({best}): {:.2}x faster\n",
        p2 / w2,
        pb / w4
    ));
    out.push_str(&format!(
        "\nin-order fetch of the same {} segments, one call each (as restore_command), every one compared\n\n{:<56} {:>10} {:>10} {:>12} {:>10}\n",
        backlog.len(),
        "",
        "median s",
        "MB/s",
        "ms/segment",
        "peak RSS"
    ));
    for r in fetches.0.iter_mut() {
        let m = median(&mut r.1);
        out.push_str(&format!(
            "{:<56} {:>10.1} {:>10.0} {:>12.1} {:>9.1}M\n",
            r.0,
            m,
            raw_mb / m,
            m * 1000.0 / backlog.len() as f64,
            r.2 as f64 / 1024.0
        ));
    }
    let pairs = [
        ("walvault, no prefetch", "pgBackRest archive-get, sync"),
        (
            "walvault, prefetch 16, 2 at once",
            "pgBackRest archive-get, async queue 16, process-max 2",
        ),
    ];
    out.push('\n');
    for (w, p) in pairs {
        out.push_str(&format!(
            "{w} against {p}: {:.2}x faster\n",
            fetches.median(p) / fetches.median(w)
        ));
    }
    let (best, pb) = fetches.best(&[
        "pgBackRest archive-get, async queue 16, process-max 2",
        "pgBackRest archive-get, async queue 16, process-max 4",
    ]);
    out.push_str(&format!(
        "walvault default (prefetch 16, 4 at once) against pgBackRest at its best ({best}): {:.2}x faster\n",
        pb / fetches.median("walvault, prefetch 16, 4 at once (default)")
    ));
    out
}

/// Replay of at least `--replay-mb` of real WAL from each archive, from one base
/// backup: restore_command `cp` from a local directory (PostgreSQL's own replay
/// speed is the limit), walvault wal-fetch and pgBackRest archive-get async from S3.
fn bench_replay(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let mut src = Cluster::init(root, "replay-src");
    src.conf("archive_mode = on\narchive_command = '/bin/false'\nmax_wal_size = 16GB\ncheckpoint_timeout = 1h");
    src.start(&s.secrets);
    let pgbr = PgBackRest::new(s, "replay", &src);
    let cp_dir = root.join("replay-cp-archive");
    std::fs::create_dir(&cp_dir).unwrap();
    chown_pg(&cp_dir);
    let wv = s.config(Backend::S3Https, "replay", &[]);
    let wv2 = s.config(
        Backend::S3Https,
        "replay",
        &[("fetch.prefetch_concurrency", "2")],
    );
    // Every segment goes to all three archives before it counts as archived.
    let archive = format!(
        "cp %p {}/%f && {} && {}",
        cp_dir.display(),
        s.walvault_line(&wv, "wal-push %p"),
        pgbr.command_line("", "archive-push %p")
    );
    src.psql(&format!(
        "alter system set archive_command = '{}'",
        archive.replace('\'', "''")
    ));
    src.psql("select pg_reload_conf()");
    src.pgbench(&["-i", "-s", "1", "-q"]);
    let base = root.join("replay-base");
    src.basebackup(&base);
    eprintln!("making at least {} MB of real WAL ...", a.replay_mb);
    let start_lsn = src.psql("select pg_current_wal_lsn()");
    let wal_mb = |c: &Cluster| -> f64 {
        c.psql(&format!(
            "select (pg_current_wal_lsn() - '{start_lsn}') / 1e6"
        ))
        .parse()
        .unwrap()
    };
    // Bulk loads and index builds (replay is fastest there, so fetching shows
    // most), then small transactions.
    while wal_mb(&src) < a.replay_mb as f64 * 0.8 {
        src.pgbench(&["-i", "-s", "20", "-q"]);
    }
    while wal_mb(&src) < a.replay_mb as f64 {
        src.pgbench(&["-c", "2", "-j", "2", "-T", "10"]);
    }
    let rows = src.psql("select count(*) from pgbench_history");
    let last = src.switch_wal();
    src.wait_archived(&last, Duration::from_secs(1800));
    let replayed_mb = wal_mb(&src);
    src.stop();

    let mut t = Table::default();
    let replay = |label: &str, restore: &str, run: usize, t: &mut Table| {
        // pgBackRest's queue of a pass before would serve this one from disk.
        let _ = std::fs::remove_dir_all(pgbr.spool().join("archive"));
        let mut c = Cluster::at(root, &format!("replay-{run}-{}", t.0.len()));
        let out = Command::new("cp")
            .arg("-a")
            .arg(&base)
            .arg(&c.pgdata)
            .output()
            .unwrap();
        assert!(out.status.success(), "cp -a: {}", stderr(&out));
        let restore = restore.replace("PGDATA", c.pgdata.to_str().unwrap());
        c.conf(&format!(
            "archive_mode = off\nrestore_command = '{}'\nrecovery_target_timeline = 'latest'",
            restore.replace('\'', "''")
        ));
        std::fs::write(c.pgdata.join("recovery.signal"), "").unwrap();
        chown_pg(&c.pgdata);
        // Not the copy's writeback: replay alone is measured.
        settle_disk();
        let t0 = Instant::now();
        c.start_opts(&s.secrets, false);
        c.wait_promoted(Duration::from_secs(1800));
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(
            c.psql("select count(*) from pgbench_history"),
            rows,
            "{label}: replay did not reach the end of the archive"
        );
        c.stop();
        std::fs::remove_dir_all(&c.pgdata).unwrap();
        t.add(label, secs, 0);
    };
    for run in 0..a.runs {
        eprintln!("replay run {} of {} ...", run + 1, a.runs);
        replay(
            "cp from a local directory (baseline)",
            &format!("cp {}/%f %p", cp_dir.display()),
            run,
            &mut t,
        );
        let walvault_side = |t: &mut Table| {
            replay(
                "walvault, prefetch 16, 2 at once",
                &s.walvault_line(&wv2, "wal-fetch %f %p"),
                run,
                t,
            );
            replay(
                "walvault, prefetch 16, 4 at once (default)",
                &s.walvault_line(&wv, "wal-fetch %f %p"),
                run,
                t,
            );
        };
        let pgbackrest_side = |t: &mut Table| {
            for pm in [2, 4] {
                // It checks that the server runs in the data directory it knows.
                replay(
                    &format!("pgBackRest async, queue 16, process-max {pm}"),
                    &pgbr.command_line(
                        &format!("--archive-async --process-max={pm} --pg1-path=PGDATA"),
                        "archive-get %f \"%p\"",
                    ),
                    run,
                    t,
                );
            }
        };
        alternated(run, &mut t, walvault_side, pgbackrest_side);
    }
    let cp = t.median("cp from a local directory (baseline)");
    let mut out = format!(
        "\nreplay: {replayed_mb:.0} MB of real WAL from one base backup, server start to promotion; {} runs\n\n{:<48} {:>10} {:>10} {:>10}\n",
        a.runs, "", "median s", "MB/s", "x cp time"
    );
    for r in t.0.iter_mut() {
        let m = median(&mut r.1);
        out.push_str(&format!(
            "{:<48} {:>10.1} {:>10.0} {:>10.2}\n",
            r.0,
            m,
            replayed_mb / m,
            m / cp
        ));
    }
    let (best, pb) = t.best(&[
        "pgBackRest async, queue 16, process-max 2",
        "pgBackRest async, queue 16, process-max 4",
    ]);
    out.push_str(&format!(
        "\nwalvault 2 at once against pgBackRest process-max 2: {:.2}x faster; walvault default against pgBackRest at its best ({best}): {:.2}x faster\n",
        t.median("pgBackRest async, queue 16, process-max 2") / t.median("walvault, prefetch 16, 2 at once"),
        pb / t.median("walvault, prefetch 16, 4 at once (default)")
    ));
    out
}

/// A year of history at a segment a minute (issue 17's catalogue targets).
const YEAR_SEGMENTS: u64 = 525_600;
const YEAR_BACKUPS: u64 = 365;

/// The objects of a repository with a year of history: `walvault.json`,
/// 525,600 WAL segments of timeline 1 (tiny: these calls list WAL, they do
/// not read it), a `.backup` file per backup, and 365 daily backups of four
/// objects each (a clear manifest, as backup-push writes it, a file list, a
/// label and a part).
fn year_of_history() -> Vec<(String, Vec<u8>)> {
    let mb16 = 16u64 << 20;
    let seg = |n: u64| format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256);
    let lsn = |l: u64| format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF);
    let t0: chrono::DateTime<chrono::Utc> = "2025-12-01T00:00:00Z".parse().unwrap();
    let mut out = vec![(
        "walvault.json".to_string(),
        serde_json::to_vec(&serde_json::json!({
            "format": 1, "system_identifier": "7000000000000000001", "pg_version": 150000,
            "created": t0, "created_by": "walvault benchmark"
        }))
        .unwrap(),
    )];
    for n in 1..=YEAR_SEGMENTS {
        out.push((format!("wal/{}", seg(n)), vec![0u8; 64]));
    }
    for d in 0..YEAR_BACKUPS {
        // At 02:00 each day: a segment a minute from t0.
        let start = 1 + d * 1440 + 120;
        let id = (t0 + chrono::Duration::minutes((start - 1) as i64))
            .format("%Y%m%dT%H%M%SZ")
            .to_string();
        let start_time = t0 + chrono::Duration::minutes((start - 1) as i64);
        let stop_time = start_time + chrono::Duration::seconds(50);
        let manifest = serde_json::json!({
            "format": 1, "id": id, "label": format!("walvault {id}"),
            "system_identifier": "7000000000000000001", "pg_version_num": 150010, "timeline": 1,
            "start_lsn": lsn(start * mb16 + 0x28), "stop_lsn": lsn(start * mb16 + 0x2000),
            "start_time": start_time, "stop_time": stop_time, "wal_segment_size": mb16,
            "raw_bytes": 1u64 << 30, "stored_bytes": 300u64 << 20, "files": 1500,
            "duration_seconds": 50.0,
            "parts": [{"key": format!("backups/{id}/part-0000.tar"), "files": 1500,
                       "raw_bytes": 1u64 << 30, "stored_bytes": 300u64 << 20}],
            "tablespaces": [], "encrypted": true, "created_by": "walvault benchmark"
        });
        out.push((
            format!("wal/{}.00000028.backup", seg(start)),
            vec![0u8; 300],
        ));
        for (name, size) in [
            ("part-0000.tar", 4096),
            ("files.json", 2048),
            ("backup_label", 300),
        ] {
            out.push((format!("backups/{id}/{name}"), vec![0u8; size]));
        }
        out.push((
            format!("backups/{id}/manifest.json"),
            serde_json::to_vec_pretty(&manifest).unwrap(),
        ));
    }
    out
}

/// Stores the year: files written directly (a local repository), or PUTs 64
/// at a time (S3).
fn fill_year(
    backend: Backend,
    s: &Setup,
    weed: &Seaweed,
    name: &str,
    objects: &[(String, Vec<u8>)],
) {
    match backend {
        Backend::Local => {
            let root = s.root.join(format!("repo-{name}"));
            for (k, v) in objects {
                let p = root.join(k);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, v).unwrap();
            }
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .unwrap();
            assert!(st.success());
        }
        _ => weed.s3(|client| async move {
            use futures_util::StreamExt;
            let puts = futures_util::stream::iter(objects.iter().map(|(k, v)| {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("{name}/{k}"))
                    .body(v.clone().into())
                    .send()
            }))
            .buffer_unordered(64);
            puts.for_each(|r| {
                r.expect("PUT");
                async {}
            })
            .await;
        }),
    }
}

/// S3 LIST requests a call made, from its debug log.
fn list_requests(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split("S3 LIST ").nth(1))
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// `status`, `backup-list`, `wal-verify` and `delete` (dry run) at a year of
/// history, from the catalogue (steady state: one new segment a minute)
/// against the same calls listing everything (no catalogue, as before it).
fn bench_catalog(a: &Args, s: &Setup, weed: &Seaweed) -> String {
    let objects = year_of_history();
    let mut out = format!(
        "\nA year of history: {} WAL segments and {} backups ({} objects); medians of {} runs\n\
         {:<10} {:<46} {:>9} {:>9} {:>6}\n",
        YEAR_SEGMENTS,
        YEAR_BACKUPS,
        objects.len(),
        a.runs,
        "backend",
        "call",
        "seconds",
        "RSS MiB",
        "LISTs"
    );
    for backend in [Backend::Local, Backend::S3Http] {
        let name = format!(
            "year-{}",
            if backend == Backend::Local {
                "local"
            } else {
                "s3"
            }
        );
        let conf = s.config(backend, &name, &[]);
        let t = Instant::now();
        fill_year(backend, s, weed, &name, &objects);
        println!(
            "{}: stored the year in {:.0} s",
            backend.label(),
            t.elapsed().as_secs_f64()
        );
        let mut next = YEAR_SEGMENTS + 1;
        let drop_catalogue = |s: &Setup| {
            for k in ["catalog/wal.json", "catalog/backups.json"] {
                match backend {
                    Backend::Local => {
                        let _ = std::fs::remove_file(s.root.join(format!("repo-{name}")).join(k));
                    }
                    _ => weed.delete(&format!("{name}/{k}")),
                }
            }
        };
        let add_segment = |n: u64| {
            let key = format!("wal/{:08X}{:08X}{:08X}", 1, n / 256, n % 256);
            match backend {
                Backend::Local => {
                    let p = s.root.join(format!("repo-{name}")).join(&key);
                    std::fs::write(&p, [0u8; 64]).unwrap();
                    chown_pg(&p);
                }
                _ => weed.put(&format!("{name}/{key}"), vec![0u8; 64]),
            }
        };
        let call = |args: &[&str]| {
            let mut c = s.walvault(&conf, args);
            c.env("WALVAULT_LOG_LEVEL", "debug");
            let t = Instant::now();
            let (o, rss) = measure(&c);
            let secs = t.elapsed().as_secs_f64();
            let stdout = String::from_utf8_lossy(&o.stdout).to_string();
            let stderr = String::from_utf8_lossy(&o.stderr).to_string();
            (
                secs,
                rss,
                list_requests(&stderr),
                o.status.code(),
                stdout,
                stderr,
            )
        };
        type Calls<'a> = [(&'a str, &'a [&'a str]); 2];
        let calls: Calls = [
            ("status --json", &["status", "--json"]),
            ("backup-list", &["backup-list"]),
        ];
        for (label, args) in calls {
            let mut rows: Vec<(String, Vec<f64>, i64, u64)> = Vec::new();
            for catalogue in [false, true] {
                let mut secs = Vec::new();
                let mut rss = 0;
                let mut lists = 0;
                if catalogue {
                    // The first run after the catalogue is gone writes it.
                    drop_catalogue(s);
                    let (t, r, l, _, _, _) = call(args);
                    rows.push((
                        format!("{label}: first run, writes the catalogue"),
                        vec![t],
                        r,
                        l,
                    ));
                }
                for _ in 0..a.runs {
                    if !catalogue {
                        drop_catalogue(s);
                    }
                    add_segment(next);
                    next += 1;
                    let (t, r, l, code, stdout, stderr) = call(args);
                    // status exits 1 without a PostgreSQL to read: the repository part must be up.
                    assert!(
                        code == Some(0) || stdout.contains("\"repository_up\": true"),
                        "{label}: {stderr}"
                    );
                    assert!(
                        stdout.contains(&format!(
                            "{:08X}{:08X}{:08X}",
                            1,
                            (next - 1) / 256,
                            (next - 1) % 256
                        )) || label == "backup-list",
                        "{label} does not see the newest segment: {stdout}"
                    );
                    if label == "backup-list" {
                        assert_eq!(
                            stdout.lines().filter(|l| l.contains(" full ")).count() as u64,
                            YEAR_BACKUPS,
                            "{stdout}"
                        );
                    }
                    secs.push(t);
                    rss = rss.max(r);
                    lists = lists.max(l);
                }
                rows.push((
                    format!(
                        "{label}: {}",
                        if catalogue {
                            "catalogue + listing after it"
                        } else {
                            "full listing (no catalogue)"
                        }
                    ),
                    secs,
                    rss,
                    lists,
                ));
            }
            for (what, mut secs, rss, lists) in rows {
                out.push_str(&format!(
                    "{:<10} {:<46} {:>9.3} {:>9.1} {:>6}\n",
                    backend.label(),
                    what,
                    median(&mut secs),
                    rss as f64 / 1024.0,
                    if backend == Backend::Local {
                        "-".to_string()
                    } else {
                        lists.to_string()
                    }
                ));
            }
        }
        for (label, args) in [
            ("wal-verify (full listing)", &["wal-verify"][..]),
            (
                "delete --keep-last 30 (dry run)",
                &["delete", "--keep-last", "30"][..],
            ),
        ] {
            let (t, r, l, code, _, stderr) = call(args);
            assert!(code == Some(0), "{label}: {stderr}");
            out.push_str(&format!(
                "{:<10} {:<46} {:>9.3} {:>9.1} {:>6}\n",
                backend.label(),
                label,
                t,
                r as f64 / 1024.0,
                if backend == Backend::Local {
                    "-".to_string()
                } else {
                    l.to_string()
                }
            ));
        }
    }
    out
}

/// Incremental backups of one PostgreSQL 17 cluster with WAL summaries
/// (`summarize_wal = on`: only the blocks they name are read) and without
/// (every block read and hashed), after the same amount of pgbench change,
/// each against a full backup taken just before it.
fn bench_summaries(a: &Args, s: &Setup) -> String {
    let mut src = Cluster::init_major(&s.root, "sum-src", 17);
    let conf = s.config(Backend::S3Https, "summaries", &[]);
    src.conf(&format!(
        "max_wal_size = 4GB\nsummarize_wal = on\narchive_mode = on\narchive_command = '{}'",
        s.walvault_line(&conf, "wal-push %p").replace('\'', "''")
    ));
    src.start(&s.secrets);
    eprintln!(
        "making a pgbench database of scale {} on PostgreSQL 17 ...",
        a.scale
    );
    src.pgbench(&["-i", "-s", &a.scale.to_string(), "-q"]);
    src.psql("checkpoint");
    let mut t = Table::default();
    let mut stored: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in 0..a.runs {
        eprintln!("summaries run {} of {} ...", run + 1, a.runs);
        for summaries in [true, false] {
            let on = if summaries { "on" } else { "off" };
            src.psql(&format!("alter system set summarize_wal = {on}"));
            src.psql("select pg_reload_conf()");
            let backup = |t: &mut Table, kind: &str| -> (String, f64) {
                let mut c = pg_command(walvault_bin().to_str().unwrap(), &src.pg_env(&s.secrets));
                c.arg("--config")
                    .arg(&conf)
                    .args(["backup-push", "--fast", &format!("--{kind}")]);
                let (secs, rss, out) = timed_ok(c, "backup-push");
                t.add(&format!("{kind}, summarize_wal = {on}"), secs, rss);
                (out.trim().to_string(), secs)
            };
            let (full, _) = backup(&mut t, "full");
            src.pgbench(&["-n", "-c", "2", "-t", &format!("{}", a.scale * 6)]);
            src.psql("checkpoint");
            let (incr, _) = backup(&mut t, "incremental");
            let m = manifest_json_with(s, &conf, &incr);
            let f = manifest_json_with(s, &conf, &full);
            assert_eq!(m["parent"], full.as_str());
            let how = if summaries {
                "block hashes and WAL summaries"
            } else {
                "block hashes"
            };
            assert_eq!(m["changes_from"], how, "{m}");
            stored.entry(on.to_string()).or_default().push(
                100.0 * m["stored_bytes"].as_f64().unwrap() / f["stored_bytes"].as_f64().unwrap(),
            );
        }
    }
    let mut out = format!(
        "\nPostgreSQL 17, pgbench scale {}, {} transactions between a full and an incremental backup; medians of {} runs\n",
        a.scale,
        a.scale * 6,
        a.runs
    );
    for on in ["on", "off"] {
        let full = t.median(&format!("full, summarize_wal = {on}"));
        let incr = t.median(&format!("incremental, summarize_wal = {on}"));
        let pct = median(stored.get_mut(on).unwrap());
        out.push_str(&format!(
            "summarize_wal = {on:<3}  full {full:6.2} s   incremental {incr:6.2} s = {:5.1}% of the full's time, storing {pct:4.1}% of its bytes\n",
            100.0 * incr / full
        ));
    }
    out
}

/// A cluster of many files (`--files`, default a million: empty relation
/// files, every tenth one 8 KiB, as many small partitions make), backed up,
/// verified and restored by walvault and by pgBackRest: time and peak memory
/// of each step, against the issue's bound of 150 MiB.
fn bench_files(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let mut src = Cluster::init(root, "files-src");
    let conf = s.config(Backend::S3Https, "files", &[]);
    let small = Args {
        runs: a.runs,
        segments: a.segments,
        scale: 1,
        drain: a.drain,
        replay_mb: a.replay_mb,
        only: Vec::new(),
        files: a.files,
        table_mb: a.table_mb,
    };
    let pgbr = archiving_pgbench(&small, s, &mut src, "files", &[&conf]);
    // pgBackRest at its best for many small files: bundled into larger
    // objects (as walvault's tar parts), not one object each.
    let mut conf_text = std::fs::read_to_string(&pgbr.conf).unwrap();
    conf_text.push_str("repo1-bundle=y\n");
    std::fs::write(&pgbr.conf, conf_text).unwrap();
    let db = src.psql("select oid from pg_database where datname = 'postgres'");
    let dir = src.pgdata.join("base").join(&db);
    eprintln!("adding {} files to {} ...", a.files, dir.display());
    let page = vec![0u8; 8192];
    for i in 0..a.files {
        let content: &[u8] = if i % 10 == 0 { &page } else { &[] };
        std::fs::write(dir.join((3_000_000 + i).to_string()), content).unwrap();
    }
    chown_pg(&dir);
    let mut t = Table::default();
    for run in 0..a.runs {
        eprintln!("files run {} of {} ...", run + 1, a.runs);
        let ids = full_then_incremental(run, s, &src, &conf, &pgbr, &mut t, |_| {
            src.psql("create table if not exists touched(i int); insert into touched values (1)");
        });
        let (secs, rss, _) = timed_ok(s.walvault(&conf, &["verify", "--backup", &ids.1]), "verify");
        t.add("walvault verify of the incremental's chain", secs, rss);
        let (secs, rss, _) = timed_ok(pgbr.cmd(&["verify"]), "pgbackrest verify");
        t.add("pgBackRest verify", secs, rss);
        let restored = root.join(format!("files-restore-{run}"));
        let recover = |t: &mut Table, delta: bool, label: &str| {
            let (secs, rss) = timed_recover(s, &conf, &restored, &ids.1, delta);
            t.add(label, secs, rss);
        };
        recover(&mut t, false, "walvault recover, empty directory");
        let count = std::fs::read_dir(restored.join("base").join(&db))
            .unwrap()
            .count();
        assert!(count >= a.files, "{count} files restored of {}", a.files);
        recover(&mut t, true, "walvault recover --delta, nothing changed");
        std::fs::remove_dir_all(&restored).unwrap();
        let pgbr_dir = root.join(format!("files-pgbr-restore-{run}"));
        for (delta, label) in [
            (false, "pgBackRest restore, empty directory"),
            (true, "pgBackRest restore --delta, nothing changed"),
        ] {
            std::fs::create_dir_all(&pgbr_dir).unwrap();
            std::fs::set_permissions(
                &pgbr_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
            chown_pg(&pgbr_dir);
            let pg1 = format!("--pg1-path={}", pgbr_dir.display());
            let mut args = vec![pg1.as_str(), "--type=immediate"];
            if delta {
                args.push("--delta");
            }
            args.push("restore");
            let (secs, rss, _) = timed_ok(pgbr.cmd(&args), "pgbackrest restore");
            t.add(label, secs, rss);
        }
        std::fs::remove_dir_all(&pgbr_dir).unwrap();
    }
    src.stop();
    let mut out = format!(
        "\nmany files: {} files added to a pgbench scale 1 cluster (empty, every tenth 8 KiB); S3 HTTPS, both tools at 2 at once, pgBackRest with repo1-bundle=y; {} runs\n\n\
         {:<52} {:>10} {:>14}\n",
        a.files, a.runs, "", "median s", "peak RSS MiB"
    );
    let mut worst = 0i64;
    for r in t.0.iter_mut() {
        if r.0.starts_with("walvault") {
            worst = worst.max(r.2);
        }
        let m = median(&mut r.1);
        out.push_str(&format!(
            "{:<52} {:>10.2} {:>14.1}\n",
            r.0,
            m,
            r.2 as f64 / 1024.0
        ));
    }
    let pairs = [
        (
            "walvault backup-push --full",
            "pgBackRest backup --type=full",
        ),
        (
            "walvault backup-push --incremental",
            "pgBackRest backup --type=incr",
        ),
        (
            "walvault recover, empty directory",
            "pgBackRest restore, empty directory",
        ),
        (
            "walvault recover --delta, nothing changed",
            "pgBackRest restore --delta, nothing changed",
        ),
    ];
    out.push_str("\nagainst pgBackRest (time ratio, >1: walvault faster): ");
    let ratios: Vec<String> = pairs
        .iter()
        .map(|(w, p)| {
            format!(
                "{} {:.2}x",
                w.trim_start_matches("walvault "),
                t.median(p) / t.median(w)
            )
        })
        .collect();
    out.push_str(&ratios.join(", "));
    out.push_str(&format!(
        "\nwalvault's highest peak RSS: {:.1} MiB (target < 150 MiB)\n",
        worst as f64 / 1024.0
    ));
    out
}

/// `restore-table` of one large table (`--table-mb`) against the procedure it
/// replaces (the whole cluster recovered beside production, then `pg_dump -t |
/// psql`), and `dump-push` / `dump-restore` of a pgbench database against
/// plain `pg_dump -Fc` into a local file and `pg_restore` from it (what the
/// codec, encryption and S3 cost).
fn bench_logical(a: &Args, s: &Setup) -> String {
    let mut src = Cluster::init(&s.root, "logical-src");
    let conf = s.config(Backend::S3Https, "logical", &[]);
    src.conf(&format!(
        "max_wal_size = 4GB\narchive_mode = on\narchive_command = '{}'",
        s.walvault_line(&conf, "wal-push %p").replace('\'', "''")
    ));
    src.start(&s.secrets);
    eprintln!(
        "making a pgbench database of scale {} and a {} MiB table ...",
        a.scale, a.table_mb
    );
    src.pgbench(&["-i", "-s", &a.scale.to_string(), "-q"]);
    // About 1 KiB a row once stored (a 900-byte text that does not compress).
    let rows = a.table_mb * 1024 * 1024 / 1000;
    src.psql(&format!(
        "create table big (id bigint primary key, body text);
         alter table big alter column body set storage external;
         insert into big select g, string_agg(md5(g::text || k::text), '') from generate_series(1, {rows}) g, generate_series(1, 28) k group by g"
    ));
    src.psql("checkpoint");
    let big_mb: i64 = src
        .psql("select pg_total_relation_size('big') >> 20")
        .parse()
        .unwrap();
    let db_mb: i64 = src
        .psql("select (pg_database_size('postgres') - pg_total_relation_size('big')) >> 20")
        .parse()
        .unwrap();
    let env = src.pg_env(&s.secrets);
    let wv = |args: &[&str]| {
        let mut c = pg_command(walvault_bin().to_str().unwrap(), &env);
        c.arg("--config").arg(&conf).args(args);
        c
    };
    timed_ok(wv(&["backup-push", "--fast"]), "backup-push");
    let target = src.psql(
        "select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    // A commit after the target (recovery stops at the first one past it), archived.
    src.psql("create table after_target (i int)");
    let last = src.switch_wal();
    src.wait_archived(&last, Duration::from_secs(120));
    let scratch = s.root.join("logical-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    chown_pg(&scratch);
    let files = s.root.join("logical-files");
    std::fs::create_dir_all(&files).unwrap();
    chown_pg(&files);
    let pg15 = |p: &str| format!("/usr/lib/postgresql/15/bin/{p}");
    let mut t = Table::default();
    let mut phases: Vec<String> = Vec::new();
    for run in 0..a.runs {
        eprintln!("logical run {} of {} ...", run + 1, a.runs);
        // restore-table, one command.
        let name = format!("big_r{run}");
        let (secs, rss, out) = timed_ok(
            wv(&[
                "restore-table",
                "--database",
                "postgres",
                "--table",
                "big",
                "--target-time",
                &target,
                "--as",
                &name,
                "--scratch-dir",
                scratch.to_str().unwrap(),
            ]),
            "restore-table",
        );
        assert!(
            out.contains(&format!("loaded: public.{name} ({rows} rows")),
            "{out}"
        );
        t.add("restore-table", secs, rss);
        phases.push(
            out.lines()
                .find(|l| l.starts_with("timings:"))
                .unwrap_or("")
                .to_string(),
        );
        src.psql(&format!("drop table {name}"));
        // By hand: the whole cluster recovered beside production, then pg_dump -t | psql.
        let dir = scratch.join(format!("hand-{run}"));
        let port = free_port();
        let t0 = Instant::now();
        let (_, _, _) = timed_ok(
            wv(&[
                "recover",
                "--pgdata",
                dir.to_str().unwrap(),
                "--target-time",
                &target,
                "--start",
                "--port",
                &port.to_string(),
                "--socket-dir",
                scratch.to_str().unwrap(),
            ]),
            "recover",
        );
        let hand = format!(
            "{} -h {} -p {port} -d postgres -t big | sed 's/public\\.big\\b/public.big_hand/g; s/big_pkey/big_hand_pkey/g' | {} -X -q -v ON_ERROR_STOP=1 --single-transaction -h {} -p {} -d postgres",
            pg15("pg_dump"), scratch.display(), pg15("psql"), src.sockdir.display(), src.port
        );
        let mut sh = pg_command("/bin/sh", &BTreeMap::new());
        sh.args(["-c", &hand]);
        timed_ok(sh, "pg_dump -t | psql");
        // And the copy stopped and removed, as restore-table does.
        let mut stop = pg_command(&pg15("pg_ctl"), &BTreeMap::new());
        stop.args(["-D", dir.to_str().unwrap(), "-m", "immediate", "stop"]);
        stop.output().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        t.add(
            "by hand: recover + pg_dump -t | psql",
            t0.elapsed().as_secs_f64(),
            0,
        );
        assert_eq!(src.psql("select count(*) from big_hand"), rows.to_string());
        src.psql("drop table big_hand");

        // dump-push against pg_dump -Fc into a local file.
        let (secs, rss, out) = timed_ok(
            wv(&["dump-push", "--database", "postgres", "--no-globals"]),
            "dump-push",
        );
        t.add("dump-push", secs, rss);
        let id = out.trim().to_string();
        let file = files.join(format!("postgres-{run}.dump"));
        let mut d = pg_command(&pg15("pg_dump"), &BTreeMap::new());
        d.args([
            "-Fc",
            "-h",
            src.sockdir.to_str().unwrap(),
            "-p",
            &src.port.to_string(),
            "-d",
            "postgres",
            "-f",
            file.to_str().unwrap(),
        ]);
        let (secs, _, _) = timed_ok(d, "pg_dump -Fc");
        t.add("pg_dump -Fc to a local file", secs, 0);
        // dump-restore against pg_restore of that file, each into a new database.
        let into = format!(
            "host={} port={} dbname=wv_{run}",
            src.sockdir.display(),
            src.port
        );
        let (secs, rss, _) = timed_ok(wv(&["dump-restore", &id, "--into", &into]), "dump-restore");
        t.add("dump-restore", secs, rss);
        src.psql(&format!("create database pg_{run}"));
        let mut r = pg_command(&pg15("pg_restore"), &BTreeMap::new());
        r.args([
            "--exit-on-error",
            "--single-transaction",
            "-h",
            src.sockdir.to_str().unwrap(),
            "-p",
            &src.port.to_string(),
            "-d",
            &format!("pg_{run}"),
            file.to_str().unwrap(),
        ]);
        let (secs, _, _) = timed_ok(r, "pg_restore");
        t.add("pg_restore from the local file", secs, 0);
        src.psql(&format!("drop database wv_{run}"));
        src.psql(&format!("drop database pg_{run}"));
        std::fs::remove_file(&file).unwrap();
    }
    let mut out = format!(
        "\nLogical: a {big_mb} MiB table (restore-table) beside a pgbench database of scale {} ({db_mb} MiB); medians of {} runs, S3 over HTTPS, encrypted\n",
        a.scale, a.runs
    );
    for (ours, base) in [
        ("restore-table", "by hand: recover + pg_dump -t | psql"),
        ("dump-push", "pg_dump -Fc to a local file"),
        ("dump-restore", "pg_restore from the local file"),
    ] {
        let rss = t.0.iter().find(|r| r.0 == ours).map(|r| r.2).unwrap_or(0);
        let (w, b) = (t.median(ours), t.median(base));
        out.push_str(&format!(
            "{ours:<14} {w:7.2} s ({} MiB peak)   {base:<38} {b:7.2} s   x {:.2}\n",
            rss >> 10,
            b / w
        ));
    }
    out.push_str(&format!("restore-table phases: {}\n", phases.join(" / ")));
    src.stop();
    out
}

/// Where one restore_command call's time goes, walvault (no prefetch) beside
/// pgBackRest's sync archive-get, both into a data directory's pg_wal: wall
/// and CPU time untraced, then the phases of traced calls (strace timestamps:
/// the wrapper, the program until its first connection, until the first byte
/// written to the file, the writing, the checks and fsync before the rename,
/// the exit). strace slows every system call, so its phases are proportions.
fn bench_profile(a: &Args, s: &Setup) -> String {
    let root = &s.root;
    let n = a.segments.clamp(4, 16);
    eprintln!("profile: making {n} segments of real WAL ...");
    // Its own corner of the root: the calls part may have made its segments.
    let corner = root.join("profile");
    std::fs::create_dir_all(&corner).unwrap();
    chown_pg(&corner);
    let (segs, mut src) = make_segments(&corner, n);
    let pgbr = PgBackRest::new(s, "profile", &src);
    src.stop();
    let names: Vec<String> = segs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    let conf = s.config(Backend::S3Https, "profile", &[("fetch.prefetch", "0")]);
    for seg in &segs {
        let (ok, err, _) =
            run_measured(&mut s.walvault(&conf, &["wal-push", seg.to_str().unwrap()]));
        assert!(ok, "walvault push: {err}");
        let (ok, err, _) = run_measured(&mut pgbr.cmd(&["archive-push", seg.to_str().unwrap()]));
        assert!(ok, "pgBackRest push: {err}");
    }
    let wal = pg_wal_dir(root, "profile-pgdata", &src.pgdata);
    type Call<'a> = Box<dyn Fn(&str, &Path) -> Command + 'a>;
    let tools: Vec<(&str, &str, Call)> = vec![
        (
            "runuser + env + true (the wrapper alone)",
            "true",
            Box::new(|_, _| pg_command("true", &BTreeMap::new())),
        ),
        (
            "cp of the raw segment (baseline)",
            "cp",
            Box::new(|f: &str, to: &Path| {
                let mut c = pg_command("cp", &BTreeMap::new());
                c.arg(segs[names.iter().position(|n| n == f).unwrap()].as_path())
                    .arg(to);
                c
            }),
        ),
        (
            "walvault wal-fetch",
            "walvault",
            Box::new(|f: &str, to: &Path| {
                s.walvault(&conf, &["wal-fetch", f, to.to_str().unwrap()])
            }),
        ),
        (
            "pgBackRest archive-get",
            "pgbackrest",
            Box::new(|f: &str, to: &Path| pgbr.cmd(&["archive-get", f, to.to_str().unwrap()])),
        ),
    ];
    let mut out = format!(
        "\nprofile of one restore_command call into a data directory's pg_wal, {n} segments each, medians\n\n{:<42} {:>8} {:>8} {:>8}\n",
        "untraced", "wall ms", "user ms", "sys ms"
    );
    for (label, _, call) in &tools {
        let (mut wall, mut user, mut sys) = (vec![], vec![], vec![]);
        for f in &names {
            let to = wal.join(f);
            let _ = std::fs::remove_file(&to);
            let (w, u, k) = cpu_times(&call(f, &to));
            wall.push(w);
            user.push(u);
            sys.push(k);
        }
        out += &format!(
            "{label:<42} {:>8.1} {:>8.1} {:>8.1}\n",
            median(&mut wall),
            median(&mut user),
            median(&mut sys)
        );
    }
    out += &format!(
        "\n{:<42} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "traced (strace -f), ms from the wrapper's start",
        "program",
        "connect",
        "1st wr",
        "writing",
        "→rename",
        "exit",
        "total"
    );
    for (label, program, call) in tools.iter().skip(2) {
        let mut phases: Vec<Vec<f64>> = vec![vec![]; 7];
        for f in &names {
            let to = wal.join(f);
            let _ = std::fs::remove_file(&to);
            let trace = root.join("profile.strace");
            let c = call(f, &to);
            let mut t = Command::new("strace");
            t.args(["-f", "--seccomp-bpf", "-ttt", "-qq", "-s", "256", "-o"])
                .arg(&trace)
                .args(["-e", "trace=execve,connect,openat,write,pwrite64,fsync,fdatasync,rename,renameat,renameat2"])
                .arg(c.get_program())
                .args(c.get_args());
            let o = t.output().unwrap();
            assert!(
                o.status.success(),
                "{label} under strace: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let text = std::fs::read_to_string(&trace).unwrap();
            let p = strace_phases(&text, program, &wal).unwrap_or_else(|| {
                let seen: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        ["connect(", "pg_wal", "rename", "fsync", "execve("]
                            .iter()
                            .any(|k| l.contains(k))
                    })
                    .take(200)
                    .collect();
                panic!(
                    "{label}: the trace shows no complete fetch:\n{}",
                    seen.join("\n")
                )
            });
            for (i, v) in p.iter().enumerate() {
                phases[i].push(*v);
            }
        }
        let m: Vec<f64> = phases.iter_mut().map(|v| median(v)).collect();
        out += &format!(
            "{label:<42} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
            m[0], m[1], m[2], m[3], m[4], m[5], m[6]
        );
    }
    out + "(program: its exec after runuser and env; connect: after the program's start; 1st wr: connection to the first byte written to the file; writing: first to last byte; →rename: checks, sha256 end, fsync when the tool does one, 0 for a tool writing %p in place; exit: rename, or the last byte, to the wrapper's end)\n"
}

/// Wall, user and system milliseconds of one command and its children: the
/// CPU time of every descendant this process reaped meanwhile (getrusage).
fn cpu_times(c: &Command) -> (f64, f64, f64) {
    let children = || {
        // SAFETY: getrusage writes one rusage struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
        let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
        (ms(u.ru_utime), ms(u.ru_stime))
    };
    let mut w = Command::new(c.get_program());
    w.args(c.get_args());
    let (u0, s0) = children();
    let t = Instant::now();
    let o = w.output().unwrap();
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    let (u1, s1) = children();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (wall, u1 - u0, s1 - s0)
}

/// From an `strace -f -ttt` log: milliseconds of each phase (see bench_profile)
/// and the total. `program` is the name of the tool's executable.
fn strace_phases(trace: &str, program: &str, wal: &Path) -> Option<[f64; 7]> {
    let wal = wal.to_string_lossy();
    let mut start = None;
    let mut exec = None;
    let mut connect = None;
    let mut fd: Option<String> = None;
    // An openat of the file interrupted by another thread's line: its result
    // comes on that thread's "resumed" line.
    let mut open_pending: Option<String> = None;
    let (mut first_write, mut last_write, mut rename) = (None, None, None);
    let mut end = 0.0f64;
    for line in trace.lines() {
        // "PID TIMESTAMP CALL", the PID padded with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let (ts, call) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
        let Ok(t) = ts.parse::<f64>() else { continue };
        start.get_or_insert(t);
        end = end.max(t);
        let execs = |p: &str| {
            call.strip_prefix("execve(\"")
                .and_then(|c| c.split('"').next())
                .is_some_and(|path| path.ends_with(&format!("/{p}")))
        };
        if exec.is_none() && execs(program) {
            exec = Some(t);
        } else if exec.is_some()
            && connect.is_none()
            && call.starts_with("connect(")
            && call.contains("sin_port")
        {
            connect = Some(t);
        } else if call.starts_with("openat(") && call.contains(&*wal) && call.contains("O_CREAT") {
            // The file the fetch writes: its descriptor is the call's result.
            if call.ends_with("<unfinished ...>") {
                open_pending = Some(pid.to_string());
            } else {
                fd = call.rsplit("= ").next().map(|r| r.trim().to_string());
            }
        } else if open_pending.as_deref() == Some(pid) && call.starts_with("<... openat resumed>") {
            fd = call.rsplit("= ").next().map(|r| r.trim().to_string());
            open_pending = None;
        } else if let Some(d) = &fd {
            let w = call.starts_with(&format!("write({d},"))
                || call.starts_with(&format!("pwrite64({d},"));
            if w {
                first_write.get_or_insert(t);
                last_write = Some(t);
            } else if call.starts_with("rename") && call.contains(&*wal) {
                rename = Some(t);
            }
        }
    }
    // A tool that writes %p in place (pgBackRest) renames nothing.
    let (s, e, c, fw, lw) = (start?, exec?, connect?, first_write?, last_write?);
    let r = rename.unwrap_or(lw);
    let ms = |a: f64, b: f64| (b - a) * 1000.0;
    Some([
        ms(s, e),
        ms(e, c),
        ms(c, fw),
        ms(fw, lw),
        ms(lw, r),
        ms(r, end),
        ms(s, end),
    ])
}

/// wal-receive under pgbench (scale 10, 4 clients, 20 s a run), into S3 over
/// HTTPS: the RPO as PostgreSQL measures it (pg_stat_replication.flush_lag,
/// the time between WAL flushed on the server and the receiver's report that
/// the repository holds it; sampled every 200 ms), TPS with no receiver, with
/// an asynchronous one (flush_seconds 1) and with a synchronous one
/// (synchronous_standby_names, flush_seconds 0), and the receiver's CPU and
/// peak memory per MB/s of WAL.
fn bench_receive(a: &Args, s: &Setup) -> String {
    let root = s.root.join("receive");
    std::fs::create_dir_all(&root).unwrap();
    chown_pg(&root);
    let mut c = Cluster::init(&root, "recv");
    c.conf("max_wal_size = 4GB");
    c.start(&s.secrets);
    c.pgbench(&["-i", "-s", "10", "-q"]);
    let conninfo = format!("host={} port={} user=postgres", c.sockdir.display(), c.port);
    let tps = |c: &Cluster| -> f64 {
        let out = c.pgbench_output(&["-n", "-T", "20", "-c", "4", "-j", "2"]);
        out.lines()
            .find_map(|l| l.strip_prefix("tps = "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no tps in {out}"))
    };
    let (mut base, mut async_tps, mut sync_tps) = (Vec::new(), Vec::new(), Vec::new());
    let (mut async_lag, mut sync_lag) = (Vec::new(), Vec::new());
    let mut cost = Vec::new();
    for run in 0..a.runs {
        eprintln!("receive run {} of {} ...", run + 1, a.runs);
        // The baseline samples as the other rows do (psql five times a second).
        let done = std::sync::atomic::AtomicBool::new(false);
        base.push(std::thread::scope(|sc| {
            let sampler = sc.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    c.psql("select count(*) from pg_stat_replication");
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let got = tps(&c);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            sampler.join().unwrap();
            got
        }));
        for sync in [false, true] {
            let flush = if sync { "0" } else { "1" };
            let conf = s.config(
                Backend::S3Https,
                &format!("receive-{run}-{sync}"),
                &[
                    ("postgres.conninfo", &format!("\"{conninfo}\"")),
                    ("receive.flush_seconds", flush),
                ],
            );
            let mut child = s.walvault(&conf, &["wal-receive"]).spawn().unwrap();
            let pid = walvault_pid(child.id());
            wait_for("the receiver streaming", Duration::from_secs(60), || {
                c.psql("select count(*) from pg_stat_replication where application_name = 'walvault' and state = 'streaming'") == "1"
            });
            if sync {
                c.psql("alter system set synchronous_standby_names = 'walvault'");
                c.psql("select pg_reload_conf()");
                wait_for("a synchronous receiver", Duration::from_secs(30), || {
                    c.psql("select sync_state from pg_stat_replication where application_name = 'walvault'") == "sync"
                });
            }
            let cpu0 = cpu_ticks(pid);
            let lsn0 = c.psql("select pg_current_wal_lsn()");
            let t0 = Instant::now();
            let done = std::sync::atomic::AtomicBool::new(false);
            let (got, lags) = std::thread::scope(|sc| {
                let sampler = sc.spawn(|| {
                    let mut v = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let lag = c.psql("select coalesce(extract(epoch from flush_lag), 0) from pg_stat_replication where application_name = 'walvault'");
                        if let Ok(x) = lag.parse::<f64>() {
                            v.push(x);
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    v
                });
                let got = tps(&c);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                (got, sampler.join().unwrap())
            });
            let secs = t0.elapsed().as_secs_f64();
            let wal_mb = c
                .psql(&format!(
                    "select pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn0}') / 1048576.0"
                ))
                .parse::<f64>()
                .unwrap();
            let cpu = (cpu_ticks(pid) - cpu0) as f64 / 100.0;
            let hwm = peak_rss_kib(pid) as f64 / 1024.0;
            if sync {
                c.psql("alter system reset synchronous_standby_names");
                c.psql("select pg_reload_conf()");
            }
            stop_pid(pid, libc::SIGTERM, Duration::from_secs(30));
            let _ = child.wait();
            let rate = wal_mb / secs;
            cost.push((sync, cpu / secs / rate, hwm, rate));
            if sync {
                sync_tps.push(got);
                sync_lag.extend(lags);
            } else {
                async_tps.push(got);
                async_lag.extend(lags);
            }
        }
    }
    c.stop();
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let mut out = format!(
        "\nwal-receive under pgbench (scale 10, 4 clients, 20 s), into S3 over HTTPS; {} runs\n\n",
        a.runs
    );
    out += &format!(
        "{:<52} {:>10} {:>12} {:>12}\n",
        "", "median TPS", "RPO median s", "RPO p99 s"
    );
    out += &format!(
        "{:<52} {:>10.0} {:>12} {:>12}\n",
        "no receiver (baseline)",
        median(&mut base),
        "-",
        "-"
    );
    out += &format!(
        "{:<52} {:>10.0} {:>12.3} {:>12.3}\n",
        "asynchronous (flush_seconds 1)",
        median(&mut async_tps),
        pct(&mut async_lag, 0.5),
        pct(&mut async_lag, 0.99)
    );
    out += &format!(
        "{:<52} {:>10.0} {:>12.3} {:>12.3}\n",
        "synchronous (synchronous_standby_names, flush 0)",
        median(&mut sync_tps),
        pct(&mut sync_lag, 0.5),
        pct(&mut sync_lag, 0.99)
    );
    for sync in [false, true] {
        let mut per: Vec<f64> = cost.iter().filter(|c| c.0 == sync).map(|c| c.1).collect();
        let mut rss: Vec<f64> = cost.iter().filter(|c| c.0 == sync).map(|c| c.2).collect();
        let mut rate: Vec<f64> = cost.iter().filter(|c| c.0 == sync).map(|c| c.3).collect();
        out += &format!(
            "receiver, {}: {:.3} of a core per MB/s of WAL (at {:.1} MB/s), peak RSS {:.1} MiB\n",
            if sync { "synchronous" } else { "asynchronous" },
            median(&mut per),
            median(&mut rate),
            median(&mut rss)
        );
    }
    out += &format!(
        "synchronous commit costs {:.2}x the baseline's TPS; asynchronous {:.2}x\n",
        median(&mut sync_tps.clone()) / median(&mut base.clone()),
        median(&mut async_tps.clone()) / median(&mut base.clone())
    );
    out
}

/// A process's user and system CPU so far, in clock ticks (100 a second).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the name: state is field 3, utime 14 and stime 15.
    let f = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(14) + f(15)
}

/// A process's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
