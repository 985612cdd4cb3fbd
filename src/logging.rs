//! Logs go to stderr (PostgreSQL copies an archive/restore command's stderr into
//! its own log). Secrets never reach a log line: nothing here formats config values.

use tracing_subscriber::EnvFilter;

pub fn init(level: &str) {
    let filter = EnvFilter::try_new(format!("walvault={level},warn"))
        .unwrap_or_else(|_| EnvFilter::new("walvault=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}
