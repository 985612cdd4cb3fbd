//! What the remote backends share (`s3.*` and `azure.*`): the transport
//! settings and the defaults, written once.

use serde::{Deserialize, Serialize};

/// Part size, retries and time limits of a remote store's requests. Each
/// backend's section holds them flattened (`s3.part_size_mb`,
/// `azure.part_size_mb`); unknown keys are refused by the key table, as
/// serde cannot deny them in a flattened struct.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Transport {
    #[serde(default = "part_size_mb")]
    pub part_size_mb: i64,
    #[serde(default = "max_attempts")]
    pub max_attempts: i64,
    #[serde(default = "timeout_seconds")]
    pub timeout_seconds: i64,
    #[serde(default = "connect_timeout_seconds")]
    pub connect_timeout_seconds: i64,
}

crate::setting::default_from_serde!(Transport);

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
