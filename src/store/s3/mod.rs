//! A repository in an S3 bucket (AWS or any S3-compatible store).
//!
//! Endpoint, region and credentials come from the standard AWS chain
//! (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/..., profiles, instance
//! roles); `s3.endpoint`/`s3.region` override. The chain is lazy: when the
//! environment gives region and keys, the instance metadata service is never asked.

mod settings;
pub use settings::Settings;

use super::{AlreadyStored, Body, Class, Mode, ObjectMeta, Store, Stored};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ServerSideEncryption, StorageClass, Tag, Tagging,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The headers every new object carries, on a PutObject or a
/// CreateMultipartUpload (two builder types, the same setters): encryption,
/// storage class, Object Lock retention, the checksum and the class tag.
/// A request on one object of the bucket: the operation with bucket and key set.
macro_rules! object_request {
    ($store:expr, $op:ident, $key:expr) => {
        $store
            .client
            .$op()
            .bucket(&$store.bucket)
            .key($store.full($key))
    };
}

macro_rules! new_object_headers {
    ($store:expr, $request:expr, $class:expr) => {
        $request
            .set_server_side_encryption($store.sse.clone())
            .set_ssekms_key_id($store.sse_kms_key_id.clone())
            .set_storage_class($store.storage_class.clone())
            .set_object_lock_mode($store.lock_mode())
            .set_object_lock_retain_until_date($store.retain_until())
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .set_tagging($store.tagging($class))
    };
}

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix with a trailing '/', or empty.
    prefix: String,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    storage_class: Option<StorageClass>,
    part_size: usize,
    /// Object Lock retention put on every new object: mode and days.
    lock: Option<(ObjectLockMode, i64)>,
    /// Tag every new object with its lifecycle class (s3.class_tags).
    class_tags: bool,
    /// s3.create_only: `If-None-Match: *` on create-only writes.
    create_only: bool,
    /// s3.timeout_seconds, also the longest wait for the next bytes of a body.
    timeout: Duration,
}

/// Builds an S3 client from the configuration and the AWS chain.
pub async fn client(cfg: &Settings) -> Result<Client> {
    // HTTPS connectors load the system's root certificates on first use only:
    // the chain's own client costs nothing when region and keys are given.
    // A private CA replaces the system's roots (as OpenSSL's CAfile does for
    // other tools): only it can vouch for the endpoint, and no call reads the
    // hundreds of system certificates.
    let https = match &cfg.ca_file {
        Some(path) => https_client(tls::TrustStore::empty().with_pem_certificate(ca_pem(path)?))
            .with_context(|| format!("s3.ca_file: no usable certificate in {}", path.display()))?,
        None => https_client(tls::TrustStore::default())?,
    };
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .retry_config(RetryConfig::standard().with_max_attempts(cfg.transport.max_attempts as u32))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(
                    cfg.transport.connect_timeout_seconds as u64,
                ))
                .operation_attempt_timeout(Duration::from_secs(
                    cfg.transport.timeout_seconds as u64,
                ))
                .build(),
        );
    let env_keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .iter()
        .all(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if env_keys {
        // What the default chain would take first anyway; building the chain also
        // builds an STS client, and with it a TLS connector, that is never used.
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    if let Some(region) = &cfg.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &cfg.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let shared = loader.load().await;
    let mut conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(cfg.force_path_style)
        // Writes send their CRC32 as a header value (see crc32): never as an
        // aws-chunked trailer, which not every S3-compatible store understands.
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    if cfg.ca_file.is_none()
        && s3_endpoint(cfg, &shared).is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"))
    {
        // Reading and parsing every file in /etc/ssl/certs costs milliseconds on
        // each wal-push, for a TLS connection to S3 that is never made.
        conf = conf.http_client(https_client(tls::TrustStore::empty())?);
    }
    Ok(Client::from_conf(conf.build()))
}

/// The CRC32 of a request body as S3's `x-amz-checksum-crc32` carries it
/// (base64 of the big-endian value). Sent with every write, so S3 checks each
/// body on arrival, and Object Lock writes, which require a checksum, have one.
fn crc32(data: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32fast::hash(data).to_be_bytes())
}

/// The PEM text of s3.ca_file, refused in one line when unreadable or certificate-less.
fn ca_pem(path: &std::path::Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("s3.ca_file: cannot read {}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        bail!(
            "s3.ca_file: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(pem)
}

fn https_client(roots: tls::TrustStore) -> Result<aws_sdk_s3::config::SharedHttpClient> {
    let context = tls::TlsContext::builder()
        .with_trust_store(roots)
        .build()
        .map_err(|e| anyhow!("TLS trust store: {e}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .tls_context(context)
        .build_https())
}

/// The endpoint S3 requests go to, resolved as the SDK does: s3.endpoint, else
/// AWS_ENDPOINT_URL_S3 or a profile's S3 endpoint_url, else AWS_ENDPOINT_URL or
/// a profile's endpoint_url. `None`: AWS's own HTTPS endpoints.
fn s3_endpoint(cfg: &Settings, shared: &aws_types::SdkConfig) -> Option<String> {
    if let Some(e) = &cfg.endpoint {
        return Some(e.clone());
    }
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("every field is set");
    shared
        .service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| shared.endpoint_url().map(str::to_string))
}

/// One line from an SDK error: the S3 code and message and the HTTP status,
/// or what kept the request from an answer, with what to check. The raw
/// response (kilobytes of headers) goes to debug logging only.
fn sdk_err<E>(e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> anyhow::Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    tracing::debug!("S3 error in full: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let err = ctx.err();
            let code = err
                .code()
                .map(str::to_string)
                .unwrap_or_else(|| match status {
                    403 => "AccessDenied".into(),
                    404 => "NotFound".into(),
                    _ => format!("HTTP{status}"),
                });
            let message = err.message().unwrap_or("no message");
            let hint = match code.as_str() {
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
                | "InvalidToken" | "AccessDenied" => {
                    "; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or role) and the bucket policy"
                }
                "NoSuchBucket" => "; check the bucket in the repo setting",
                "NotImplemented" => {
                    "; a store without conditional writes (If-None-Match) needs s3.create_only = false"
                }
                "PermanentRedirect" | "AuthorizationHeaderMalformed" => {
                    "; check s3.region (AWS_REGION)"
                }
                _ => "",
            };
            anyhow!("S3 error {code}: {message} (HTTP {status}){hint}")
        }
        SdkError::TimeoutError(_) => {
            anyhow!("S3 request timed out (s3.timeout_seconds); check the endpoint and the network")
        }
        SdkError::DispatchFailure(_)
        | SdkError::ConstructionFailure(_)
        | SdkError::ResponseError(_) => {
            // The innermost cause says it plainly (connection refused, DNS, TLS).
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            anyhow!(
                "S3 request failed: {cause}; check s3.endpoint (AWS_ENDPOINT_URL) and that the S3 service is reachable"
            )
        }
        _ => anyhow!("{}", DisplayErrorContext(&e)),
    }
}

/// `sdk_err` for a write: a `412 Precondition Failed` answer to `If-None-Match: *`
/// is the typed refusal [`AlreadyStored`], which callers branch on.
fn write_err<E>(
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    location: String,
) -> anyhow::Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) {
        return AlreadyStored { location }.into();
    }
    sdk_err(e)
}

impl S3Store {
    /// LIST from the start of `prefix` or after a key, page by page.
    async fn list_from(&self, prefix: &str, after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut requests = 0u32;
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full(prefix))
            .set_start_after(after.map(|a| self.full(a)))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            requests += 1;
            let page = page
                .map_err(sdk_err)
                .with_context(|| format!("S3 LIST of {} failed", self.locate(prefix)))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: rel.to_string(),
                    size: o.size().unwrap_or(0) as u64,
                    modified: o
                        .last_modified()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                    retain_until: None,
                    version: None,
                });
            }
        }
        tracing::debug!(
            "S3 LIST {}{}: {requests} requests, {} objects",
            self.locate(prefix),
            after.map(|a| format!(" after {a}")).unwrap_or_default(),
            out.len()
        );
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn connect(cfg: &Settings, bucket: String, prefix: String) -> Result<S3Store> {
        Ok(S3Store {
            client: client(cfg).await?,
            bucket,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            sse: cfg.sse.as_deref().map(ServerSideEncryption::from),
            sse_kms_key_id: cfg.sse_kms_key_id.clone(),
            storage_class: cfg.storage_class.as_deref().map(StorageClass::from),
            part_size: cfg.transport.part_size_mb as usize * 1024 * 1024,
            lock: cfg
                .object_lock_mode
                .as_deref()
                .map(|m| (ObjectLockMode::from(m), cfg.object_lock_days)),
            class_tags: cfg.class_tags,
            create_only: cfg.create_only,
            timeout: Duration::from_secs(cfg.transport.timeout_seconds as u64),
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_mode(&self) -> Option<ObjectLockMode> {
        self.lock.as_ref().map(|(m, _)| m.clone())
    }

    /// Retention end for an object written now.
    fn retain_until(&self) -> Option<aws_smithy_types::DateTime> {
        self.lock.as_ref().map(|(_, days)| {
            aws_smithy_types::DateTime::from_secs(chrono::Utc::now().timestamp() + days * 86_400)
        })
    }

    /// The `If-None-Match` header of a write.
    fn condition(&self, mode: Mode) -> Option<String> {
        (self.create_only && mode == Mode::Create).then(|| "*".to_string())
    }

    /// The `x-amz-tagging` value for a new object of `class`.
    fn tagging(&self, class: Class) -> Option<String> {
        self.class_tags
            .then(|| format!("{}={}", Class::TAG, class.as_str()))
    }

    async fn put_multipart(
        &self,
        key: &str,
        first: bytes::Bytes,
        body: &mut Body,
        class: Class,
        mode: Mode,
    ) -> Result<Stored> {
        let create = object_request!(self, create_multipart_upload, key);
        let created = new_object_headers!(self, create, class)
            .send()
            .await
            .map_err(sdk_err)?;
        let upload_id = created
            .upload_id()
            .context("S3 returned no upload id")?
            .to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut chunk = first;
            loop {
                let number = parts.len() as i32 + 1;
                let len = chunk.len() as i64;
                let crc = crc32(&chunk);
                let out = object_request!(self, upload_part, key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .checksum_crc32(crc.clone())
                    .body(ByteStream::from(chunk))
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("uploading part {number}"))?;
                parts.push(
                    CompletedPart::builder()
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_crc32(crc)
                        .part_number(number)
                        .build(),
                );
                let (next, _) = fill(body, self.part_size).await?;
                if next.is_empty() {
                    break;
                }
                chunk = next;
            }
            let done = object_request!(self, complete_multipart_upload, key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .set_if_none_match(self.condition(mode))
                .send()
                .await
                .map_err(|e| write_err(e, self.locate(key)))?;
            Ok(Stored {
                version: done.version_id().map(str::to_string),
            })
        }
        .await;
        if result.is_err() {
            // Best effort: an incomplete upload is invisible, the bucket lifecycle rule
            // removes any that this could not abort.
            let _ = object_request!(self, abort_multipart_upload, key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

/// A response body that fails when no byte arrives for `limit`. The SDK's
/// attempt timeout ends at the response headers; a connection that stalls in the
/// middle of a body must end in an error the caller retries, not hang replay.
pub(super) struct IdleTimeout<R> {
    inner: R,
    limit: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<R> IdleTimeout<R> {
    pub(super) fn new(inner: R, limit: Duration) -> Self {
        IdleTimeout {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for IdleTimeout<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + this.limit;
                this.deadline.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {:?} (the store's timeout_seconds)", this.limit),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Reads up to `limit` bytes; the flag says whether the body ended.
pub(super) async fn fill(body: &mut Body, limit: usize) -> Result<(bytes::Bytes, bool)> {
    let mut buf = BytesMut::with_capacity(limit.min(8 << 20));
    while buf.len() < limit {
        let want = (limit - buf.len()).min(1 << 20);
        let mut take = body.take(want as u64);
        let n = take.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok((buf.freeze(), true));
        }
    }
    Ok((buf.freeze(), false))
}

#[async_trait]
impl Store for S3Store {
    async fn write(&self, key: &str, mut body: Body, class: Class, mode: Mode) -> Result<Stored> {
        let (first, ended) = fill(&mut body, self.part_size)
            .await
            .with_context(|| format!("reading the data for {}", self.locate(key)))?;
        if ended {
            return self.write_single(key, first, class, mode).await;
        }
        self.put_multipart(key, first, &mut body, class, mode)
            .await
            .with_context(|| format!("S3 upload of {} failed", self.locate(key)))
    }

    fn single_request_max(&self) -> usize {
        self.part_size
    }

    async fn write_single(
        &self,
        key: &str,
        data: bytes::Bytes,
        class: Class,
        mode: Mode,
    ) -> Result<Stored> {
        let len = data.len() as i64;
        let crc = crc32(&data);
        let put = object_request!(self, put_object, key)
            .body(ByteStream::from(data))
            .content_length(len);
        let out = new_object_headers!(self, put, class)
            .checksum_crc32(crc)
            .set_if_none_match(self.condition(mode))
            .send()
            .await
            .map_err(|e| write_err(e, self.locate(key)))
            .with_context(|| format!("S3 upload of {} failed", self.locate(key)))?;
        Ok(Stored {
            version: out.version_id().map(str::to_string),
        })
    }

    async fn read(&self, key: &str, version: Option<&str>) -> Result<Option<Body>> {
        match object_request!(self, get_object, key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
        {
            Ok(out) => Ok(Some(Box::new(IdleTimeout::new(
                out.body.into_async_read(),
                self.timeout,
            )))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => {
                Err(sdk_err(e)).with_context(|| format!("S3 GET of {} failed", self.locate(key)))
            }
        }
    }

    async fn read_tail(&self, key: &str, n: u64, version: Option<&str>) -> Result<Option<Vec<u8>>> {
        let out = match object_request!(self, get_object, key)
            .set_version_id(version.map(str::to_string))
            .range(format!("bytes=-{n}"))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => {
                return Err(sdk_err(e))
                    .with_context(|| format!("S3 GET of {} failed", self.locate(key)))
            }
        };
        let data = tokio::time::timeout(self.timeout, out.body.collect())
            .await
            .map_err(|_| anyhow!("no data for {:?}", self.timeout))
            .and_then(|r| r.map_err(anyhow::Error::new))
            .with_context(|| format!("reading {}", self.locate(key)))?;
        Ok(Some(data.to_vec()))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match object_request!(self, head_object, key).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0) as u64,
                modified: out
                    .last_modified()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                retain_until: out
                    .object_lock_retain_until_date()
                    .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                version: out.version_id().map(str::to_string),
            })),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => {
                Err(sdk_err(e)).with_context(|| format!("S3 HEAD of {} failed", self.locate(key)))
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_from(prefix, None).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        self.list_from(prefix, Some(after)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        object_request!(self, delete_object, key)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("S3 DELETE of {} failed", self.locate(key)))?;
        Ok(())
    }

    async fn object_lock(&self) -> Result<bool> {
        match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| e.as_str() == "Enabled")),
            Err(e) => {
                use aws_sdk_s3::error::ProvideErrorMetadata;
                if e.code() == Some("ObjectLockConfigurationNotFoundError")
                    || format!("{}", DisplayErrorContext(&e))
                        .contains("ObjectLockConfigurationNotFound")
                {
                    Ok(false)
                } else {
                    Err(sdk_err(e)).with_context(|| {
                        format!("asking whether bucket {} has Object Lock", self.bucket)
                    })
                }
            }
        }
    }

    async fn set_class(&self, key: &str, class: Class) -> Result<bool> {
        let tagging = Tagging::builder()
            .tag_set(
                Tag::builder()
                    .key(Class::TAG)
                    .value(class.as_str())
                    .build()
                    .expect("key and value set"),
            )
            .build()
            .expect("tag set given");
        object_request!(self, put_object_tagging, key)
            .tagging(tagging)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| {
                format!(
                    "tagging {} {}={}",
                    self.locate(key),
                    Class::TAG,
                    class.as_str()
                )
            })?;
        Ok(true)
    }

    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full(key))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn checksum_header_value() {
        // x-amz-checksum-crc32: base64 of the big-endian CRC32 (AWS's example form).
        assert_eq!(super::crc32(b"hello world"), "DUoRhQ==");
        assert_eq!(super::crc32(b""), "AAAAAA==");
    }
}
