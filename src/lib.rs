//! walvault: keeps a PostgreSQL cluster recoverable to any point in time.
//!
//! Data flows one way: `cmd` (one room per command) → the modules that do the
//! work (`wal::push`, `wal::fetch`, ...) → `codec` (compression, encryption,
//! checksums) → `store` (local directory, S3 or Azure Blob).

pub mod backup;
pub mod cmd;
pub mod codec;
pub mod config;
pub mod drill;
pub mod dump;
pub mod exit;
pub mod files;
pub mod host;
pub mod logging;
pub mod marks;
pub mod pg;
pub mod progress;
pub mod recover;
pub mod repo;
pub mod repo_switch;
pub mod retention;
pub mod scratch;
pub mod setting;
pub mod status;
pub mod store;
pub mod table;
#[cfg(test)]
mod testing;
pub mod throttle;
pub mod wal;
pub mod wal_verify;
