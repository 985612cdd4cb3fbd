//! Defaults the remote backends share (`s3.*` and `azure.*`), written once.

// As long as the usual keep of daily backups (a few weeks): retention removes an
// object once its backups expire, so a shorter lock would not protect them all.
pub fn lock_days() -> i64 {
    35
}
// 16 MiB: a WAL segment in one request; larger objects in parts of this size.
pub fn part_size_mb() -> i64 {
    16
}
pub fn max_attempts() -> i64 {
    4
}
pub fn timeout_seconds() -> i64 {
    120
}
pub fn connect_timeout_seconds() -> i64 {
    5
}
