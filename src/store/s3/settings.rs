//! The S3 backend's settings (`s3.*`): declared once here, with their
//! defaults and the values they accept; config.rs reads them in with the rest.

use crate::setting::{key, one_of, range, Key, Kind};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

impl Settings {
    pub const KEYS: &[Key] = &[
        key(
            "s3.endpoint",
            Kind::Str,
            "S3 endpoint URL for S3-compatible stores (else AWS_ENDPOINT_URL or AWS)",
        ),
        key(
            "s3.region",
            Kind::Str,
            "S3 region (else AWS_REGION or the AWS profile)",
        ),
        key(
            "s3.ca_file",
            Kind::Str,
            "PEM file of the CA certificates trusted instead of the system's roots, for an HTTPS endpoint signed by a private CA",
        ),
        key(
            "s3.force_path_style",
            Kind::Bool,
            "path-style addressing (SeaweedFS, MinIO, many S3-compatible stores)",
        ),
        one_of(
            "s3.sse",
            &["AES256", "aws:kms"],
            "server-side encryption: AES256 or aws:kms",
        ),
        key(
            "s3.sse_kms_key_id",
            Kind::Str,
            "KMS key id when s3.sse = aws:kms",
        ),
        key(
            "s3.storage_class",
            Kind::Str,
            "storage class for new objects, e.g. STANDARD_IA",
        ),
        one_of(
            "s3.object_lock_mode",
            &["GOVERNANCE", "COMPLIANCE"],
            "Object Lock retention on every object pushed: GOVERNANCE or COMPLIANCE (the bucket must have Object Lock)",
        ),
        range(
            "s3.object_lock_days",
            1,
            36_500,
            "Object Lock retention period in days, with s3.object_lock_mode",
        ),
        key(
            "s3.class_tags",
            Kind::Bool,
            "tag every object pushed walvault-class=standard, for the bucket's lifecycle rules",
        ),
        key(
            "s3.create_only",
            Kind::Bool,
            "write every object with If-None-Match: * so a stored object is never replaced; false only for stores that refuse conditional writes",
        ),
        range(
            "s3.part_size_mb",
            5,
            5_120,
            "multipart part size in MiB (5 to 5120); larger objects are uploaded in parts",
        ),
        range(
            "s3.max_attempts",
            1,
            100_000,
            "attempts per S3 request, with exponential backoff",
        ),
        range(
            "s3.timeout_seconds",
            1,
            100_000,
            "time limit of one S3 request attempt, and the longest wait for more bytes of a response body",
        ),
        range(
            "s3.connect_timeout_seconds",
            1,
            100_000,
            "time limit to open a connection to S3",
        ),
    ];
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub force_path_style: bool,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub storage_class: Option<String>,
    pub object_lock_mode: Option<String>,
    #[serde(default = "crate::store::remote::lock_days")]
    pub object_lock_days: i64,
    #[serde(default)]
    pub class_tags: bool,
    #[serde(default = "yes")]
    pub create_only: bool,
    #[serde(flatten)]
    pub transport: crate::store::remote::Transport,
}

crate::setting::default_from_serde!(Settings);

impl Settings {
    /// What no single key's declaration can say.
    pub fn validate(&self) -> Result<()> {
        if self.sse_kms_key_id.is_some() && self.sse.as_deref() != Some("aws:kms") {
            bail!("config key s3.sse_kms_key_id is set but s3.sse is not aws:kms");
        }
        Ok(())
    }
}

// Creates only (If-None-Match: *): a stored object is never replaced.
fn yes() -> bool {
    true
}
