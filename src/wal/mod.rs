//! WAL: file names and LSNs, page headers, timeline history, and the two
//! commands PostgreSQL calls, `push` (archive_command) and `fetch` (restore_command).

pub mod archived;
pub mod backlog;
pub mod catalog;
pub mod fetch;
pub mod header;
pub mod history;
pub mod inventory;
pub mod names;
pub mod prefetch;
pub mod push;
pub mod receive;
pub mod replication;
pub mod segments;
pub mod stream;
pub mod switches;

/// The object key of a WAL file in the repository.
pub fn key(name: &str) -> String {
    format!("wal/{name}")
}
