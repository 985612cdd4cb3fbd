//! walvault: keeps a PostgreSQL cluster recoverable to any point in time.
//!
//! Data flows one way: `cli` → command modules (`wal::push`, `wal::fetch`, ...)
//! → `codec` (compression, encryption, checksums) → `store` (local directory or S3).

pub mod backup;
pub mod cli;
pub mod codec;
pub mod config;
pub mod drill;
pub mod dump;
pub mod exit;
pub mod host;
pub mod keygen;
pub mod logging;
pub mod pg;
pub mod progress;
pub mod recover;
pub mod repo;
pub mod repo_switch;
pub mod retention;
pub mod scratch;
pub mod status;
pub mod store;
pub mod table;
pub mod throttle;
pub mod wal;
