//! The Azure Blob backend's settings (`azure.*`): declared once here, with
//! their defaults and the values they accept; config.rs reads them in with the rest.

use crate::setting::{key, one_of, range, Key, Kind};
use serde::{Deserialize, Serialize};

impl Settings {
    pub const KEYS: &[Key] = &[
        key(
            "azure.endpoint",
            Kind::Str,
            "Azure Blob endpoint URL (sovereign clouds, Azurite); else https://ACCOUNT.blob.core.windows.net",
        ),
        range(
            "azure.part_size_mb",
            1,
            4_000,
            "block size in MiB (1 to 4000); larger objects are staged as blocks",
        ),
        range(
            "azure.max_attempts",
            1,
            100_000,
            "attempts per Azure request, with exponential backoff",
        ),
        range(
            "azure.timeout_seconds",
            1,
            100_000,
            "longest wait for more bytes of an Azure response",
        ),
        range(
            "azure.connect_timeout_seconds",
            1,
            100_000,
            "time limit to open a connection to Azure",
        ),
        one_of(
            "azure.immutability_mode",
            &["Unlocked", "Locked"],
            "a time-based immutability policy on every blob written: Unlocked or Locked (the container needs version-level immutability support)",
        ),
        range(
            "azure.immutability_days",
            1,
            36_500,
            "immutability period in days, with azure.immutability_mode",
        ),
    ];
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Settings {
    pub endpoint: Option<String>,
    #[serde(flatten)]
    pub transport: crate::store::remote::Transport,
    pub immutability_mode: Option<String>,
    #[serde(default = "crate::store::remote::lock_days")]
    pub immutability_days: i64,
}

crate::setting::default_from_serde!(Settings);
