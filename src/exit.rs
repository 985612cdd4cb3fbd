//! Exit codes PostgreSQL relies on. See docs/architecture.md.

/// Success.
pub const OK: u8 = 0;
/// Failure; for `wal-fetch` also "this file is authoritatively absent".
pub const FAILURE: u8 = 1;
/// `wal-fetch` could not tell whether the file exists (store unreachable, corrupt
/// object, missing key). PostgreSQL treats any status above 125 as fatal for
/// `restore_command` and stops recovery, instead of taking "absent" as the end of
/// the archive and promoting at the wrong point.
pub const FETCH_FATAL: u8 = 128;
