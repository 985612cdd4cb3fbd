//! A byte rate shared by the threads of one backup or restore
//! (`backup.max_rate_mb`, `restore.max_rate_mb`): each caller waits until the
//! bytes counted so far are due at the rate, so the average never exceeds it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    bytes_per_second: f64,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    /// None for 0 (no limit).
    pub fn mib_per_second(rate: i64) -> Option<std::sync::Arc<Throttle>> {
        (rate > 0).then(|| {
            std::sync::Arc::new(Throttle {
                bytes_per_second: rate as f64 * 1048576.0,
                state: Mutex::new((Instant::now(), 0)),
            })
        })
    }

    /// Counts `n` bytes and sleeps until they are due.
    pub fn take(&self, n: u64) {
        let due = {
            let mut s = self.state.lock().expect("throttle");
            s.1 += n;
            s.0 + Duration::from_secs_f64(s.1 as f64 / self.bytes_per_second)
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// `take` on an optional throttle.
pub fn take(t: &Option<std::sync::Arc<Throttle>>, n: u64) {
    if let Some(t) = t {
        t.take(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_to_the_rate() {
        assert!(Throttle::mib_per_second(0).is_none());
        let t = Throttle::mib_per_second(8).map(Some).unwrap();
        let start = Instant::now();
        for _ in 0..4 {
            take(&t, 1 << 20);
        }
        // 4 MiB at 8 MiB/s: half a second.
        let took = start.elapsed().as_secs_f64();
        assert!((0.45..1.5).contains(&took), "{took}");
    }
}
