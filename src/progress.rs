//! Progress of long transfers: a bar on a terminal, a log line every 10 s otherwise
//! (cron mail and journald want lines, not carriage returns).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    what: String,
    total: AtomicU64,
    done: AtomicU64,
    bar: Option<ProgressBar>,
    last_log: Mutex<Instant>,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            what: what.to_string(),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            bar,
            last_log: Mutex::new(Instant::now()),
        }
    }

    /// Counts without showing anything (work inside a step another bar shows).
    pub fn hidden() -> Progress {
        Progress {
            what: String::new(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bar: None,
            last_log: Mutex::new(Instant::now()),
        }
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.bar {
            Some(b) => b.set_position(done),
            None if self.what.is_empty() => {}
            None => {
                let mut last = self.last_log.lock().expect("progress lock");
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    let total = self.total.load(Ordering::Relaxed);
                    tracing::info!(
                        "{}: {} of {} MiB ({:.0}%)",
                        self.what,
                        done >> 20,
                        total >> 20,
                        100.0 * done as f64 / total.max(1) as f64
                    );
                }
            }
        }
    }

    /// More to do than said at the start (a total learnt while walking).
    pub fn grow(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
