//! A repository in an Azure Blob Storage container: `az://account/container/prefix`.
//!
//! Built on the `object_store` crate rather than the official `azure_storage_blob`:
//! it signs with an account key (Shared Key), which Azurite and most existing
//! setups use and the official crate does not offer, and it brings the rest of
//! Azure's credential chain (SAS, service principal, workload and managed
//! identity, the Azure CLI), retries with backoff, conditional creates and
//! block-blob staging. Credentials come from the usual `AZURE_STORAGE_*` /
//! `AZURE_*` variables, or `AZURE_STORAGE_CONNECTION_STRING`; `azure.endpoint`
//! names another endpoint (sovereign clouds, Azurite).
//!
//! An object up to `azure.part_size_mb` is one Put Blob with `If-None-Match: *`
//! when created: the service refuses a taken name atomically. A larger one is
//! staged as blocks and committed; the commit takes no condition, so a create
//! checks the name first (WAL segments are far below the part size; larger
//! objects belong to a new backup id).

mod policy;
mod settings;

use super::s3::{fill, IdleTimeout};
use super::{AlreadyStored, Body, Class, Mode, ObjectMeta, Store, Stored};
use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use policy::Immutability;
pub use settings::Settings;
use std::time::Duration;

pub struct AzureStore {
    client: MicrosoftAzure,
    account: String,
    container: String,
    /// Key prefix with a trailing '/', or empty.
    prefix: String,
    part_size: usize,
    timeout: Duration,
    /// Set on every blob written, when `azure.immutability_mode` is.
    immutability: Option<Immutability>,
}

/// What a connection string holds that walvault uses.
#[derive(Debug, Default, PartialEq)]
struct ConnectionString {
    account: Option<String>,
    key: Option<String>,
    sas: Option<String>,
    endpoint: Option<String>,
}

/// Parses `AccountName=…;AccountKey=…;BlobEndpoint=…;SharedAccessSignature=…`.
fn parse_connection_string(s: &str) -> Result<ConnectionString> {
    let mut c = ConnectionString::default();
    for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        // The pair itself is not quoted: it may be a secret.
        let (k, v) = pair
            .split_once('=')
            .context("AZURE_STORAGE_CONNECTION_STRING: a part is not KEY=VALUE")?;
        match k {
            "AccountName" => c.account = Some(v.to_string()),
            "AccountKey" => c.key = Some(v.to_string()),
            "SharedAccessSignature" => c.sas = Some(v.to_string()),
            "BlobEndpoint" => c.endpoint = Some(v.to_string()),
            _ => {} // protocol, suffix, other services' endpoints
        }
    }
    Ok(c)
}

/// One line from an object_store error: what failed, on which object, the
/// service's answer, and what to check. The full error goes to debug logging.
fn az_err(op: &str, location: &str, e: object_store::Error) -> anyhow::Error {
    tracing::debug!("Azure error in full: {e:?}");
    use object_store::Error as E;
    let hint = match &e {
        E::Unauthenticated { .. } | E::PermissionDenied { .. } => {
            "; check the Azure credentials (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_CONNECTION_STRING or the managed identity) and the role on the container"
        }
        E::NotFound { .. } => "; check the account and container in the repo setting",
        _ => {
            let text = e.to_string();
            if text.contains("error sending request") || text.contains("onnect") {
                "; check azure.endpoint and that the storage account is reachable"
            } else {
                ""
            }
        }
    };
    anyhow!(
        "Azure {op} of {location} failed: {}{hint}",
        answer(&e.to_string())
    )
}

/// The service's answer in an object_store error message: Azure's error code
/// and message and the HTTP status when the response carried them (the rest is
/// the request and the raw body), else the message on one line.
fn answer(text: &str) -> String {
    let status = text
        .find("status code: ")
        .and_then(|i| text[i + 13..].get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) if text.contains("<Code>") => service_answer(text, status),
        _ => {
            let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            one.chars().take(300).collect()
        }
    }
}

/// `Code: message (HTTP status)` from an Azure error body (the message's
/// first line: the rest is the request id and time).
pub(super) fn service_answer(body: &str, status: u16) -> String {
    let between = |open: &str, close: &str| {
        let start = body.find(open)? + open.len();
        let end = body[start..].find(close).map_or(body.len(), |e| start + e);
        Some(body[start..end].to_string())
    };
    let code = between("<Code>", "</Code>")
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "no error code".into());
    let message = between("<Message>", "</Message>")
        .and_then(|m| m.lines().next().map(|l| l.trim().to_string()))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "no message".into());
    format!("{code}: {message} (HTTP {status})")
}

impl AzureStore {
    /// Lists below the directory holding `prefix` (object_store lists by
    /// directory), keeping the keys that start with it; after a key, with
    /// Azure's `startFrom`.
    async fn list_from(&self, prefix: &str, after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let full = format!("{}{prefix}", self.prefix);
        let dir = match full.rfind('/') {
            Some(i) => Path::from(&full[..i]),
            None => Path::from(""),
        };
        let mut out = Vec::new();
        let mut stream = match after {
            Some(a) => self
                .client
                .list_with_offset(Some(&dir), &Path::from(format!("{}{a}", self.prefix))),
            None => self.client.list(Some(&dir)),
        };
        while let Some(m) = stream.next().await {
            let m = m.map_err(|e| az_err("LIST", &self.locate(prefix), e))?;
            let k = m.location.to_string();
            if !k.starts_with(&full) {
                continue;
            }
            let Some(rel) = k.strip_prefix(&self.prefix) else {
                continue;
            };
            out.push(ObjectMeta {
                key: rel.to_string(),
                size: m.size,
                modified: Some(m.last_modified),
                retain_until: None,
                version: None,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn connect(
        cfg: &Settings,
        account: String,
        container: String,
        prefix: String,
    ) -> Result<AzureStore> {
        // reqwest's TLS without a built-in provider: ring, as for S3 (the second
        // install of a process finds it installed, which is fine).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_account(&account)
            .with_container_name(&container);
        let mut endpoint = cfg.endpoint.clone();
        if let Ok(cs) = std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
            let cs = parse_connection_string(&cs)?;
            if let Some(a) = cs.account.filter(|a| a != &account) {
                bail!("AZURE_STORAGE_CONNECTION_STRING is for account '{a}', but the repository is in account '{account}'");
            }
            if let Some(k) = cs.key {
                b = b.with_access_key(k);
            }
            if let Some(sas) = cs.sas {
                let pairs = url::form_urlencoded::parse(sas.trim_start_matches('?').as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect::<Vec<_>>();
                b = b.with_sas_authorization(pairs);
            }
            endpoint = endpoint.or(cs.endpoint);
        }
        // object_store's own environment names for the endpoint.
        endpoint = endpoint
            .or_else(|| std::env::var("AZURE_STORAGE_ENDPOINT").ok())
            .or_else(|| std::env::var("AZURE_ENDPOINT").ok());
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(
                cfg.transport.connect_timeout_seconds as u64,
            ))
            // A whole-request limit would cut long transfers: a limit between
            // reads instead, so a stalled connection fails and is retried.
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(cfg.transport.timeout_seconds as u64));
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e.clone());
            if e.to_ascii_lowercase().starts_with("http://") {
                options = options.with_allow_http(true);
            }
        }
        let retry = RetryConfig {
            max_retries: (cfg.transport.max_attempts.max(1) - 1) as usize,
            retry_timeout: Duration::from_secs(cfg.transport.timeout_seconds as u64 * 2),
            ..Default::default()
        };
        let client = b
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| {
                anyhow!(
                    "Azure repository az://{account}/{container}: {}",
                    e.to_string()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })?;
        let immutability = match &cfg.immutability_mode {
            Some(mode) => Some(Immutability::new(
                client.credentials().clone(),
                &account,
                endpoint.as_deref(),
                &container,
                mode,
                cfg.immutability_days,
                cfg.transport.max_attempts.max(1) as u32,
                (
                    Duration::from_secs(cfg.transport.connect_timeout_seconds as u64),
                    Duration::from_secs(cfg.transport.timeout_seconds as u64),
                ),
            )?),
            None => None,
        };
        Ok(AzureStore {
            client,
            immutability,
            account,
            container,
            prefix: if prefix.is_empty() {
                prefix
            } else {
                format!("{prefix}/")
            },
            part_size: cfg.transport.part_size_mb as usize * 1024 * 1024,
            timeout: Duration::from_secs(cfg.transport.timeout_seconds as u64),
        })
    }

    fn path(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.prefix))
    }

    /// Puts the immutability policy on a blob this store just wrote. A failure
    /// fails the write: the caller (PostgreSQL's archiver) tries again, and
    /// the retry meets the blob in place and protects it then (`protect`).
    async fn protect(&self, key: &str, stored: Stored) -> Result<Stored> {
        if let Some(p) = &self.immutability {
            let blob = format!("{}{key}", self.prefix);
            p.set(&blob, stored.version.as_deref(), &self.locate(key))
                .await?;
        }
        Ok(stored)
    }

    fn already_stored(&self, key: &str) -> Result<Stored> {
        Err(AlreadyStored {
            location: self.locate(key),
        }
        .into())
    }

    async fn put_single(&self, key: &str, data: bytes::Bytes, mode: Mode) -> Result<Stored> {
        let opts = PutOptions {
            mode: match mode {
                Mode::Create => PutMode::Create,
                Mode::Replace => PutMode::Overwrite,
            },
            ..Default::default()
        };
        match self
            .client
            .put_opts(&self.path(key), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(r) => self.protect(key, Stored { version: r.version }).await,
            Err(object_store::Error::AlreadyExists { .. }) => self.already_stored(key),
            Err(e) => Err(az_err("upload", &self.locate(key), e)),
        }
    }

    async fn put_blocks(
        &self,
        key: &str,
        first: bytes::Bytes,
        body: &mut Body,
        mode: Mode,
    ) -> Result<Stored> {
        if mode == Mode::Create && self.head(key).await?.is_some() {
            return self.already_stored(key);
        }
        let location = self.locate(key);
        let mut upload = self
            .client
            .put_multipart(&self.path(key))
            .await
            .map_err(|e| az_err("upload start", &location, e))?;
        let result = async {
            let mut chunk = first;
            loop {
                upload
                    .put_part(PutPayload::from_bytes(chunk))
                    .await
                    .map_err(|e| az_err("block upload", &location, e))?;
                let (next, _) = fill(body, self.part_size).await?;
                if next.is_empty() {
                    break;
                }
                chunk = next;
            }
            let r = upload
                .complete()
                .await
                .map_err(|e| az_err("block list commit", &location, e))?;
            Ok(Stored { version: r.version })
        }
        .await;
        match result {
            Ok(stored) => self.protect(key, stored).await,
            Err(e) => {
                // Uncommitted blocks are invisible and dropped by the service within a week.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    async fn get_with(
        &self,
        key: &str,
        opts: GetOptions,
    ) -> Result<Option<object_store::GetResult>> {
        match self.client.get_opts(&self.path(key), opts).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(az_err("GET", &self.locate(key), e)),
        }
    }
}

#[async_trait]
impl Store for AzureStore {
    async fn write(&self, key: &str, mut body: Body, _: Class, mode: Mode) -> Result<Stored> {
        let (first, ended) = fill(&mut body, self.part_size)
            .await
            .with_context(|| format!("reading the data for {}", self.locate(key)))?;
        if ended {
            self.put_single(key, first, mode).await
        } else {
            self.put_blocks(key, first, &mut body, mode).await
        }
    }

    fn single_request_max(&self) -> usize {
        self.part_size
    }

    async fn write_single(
        &self,
        key: &str,
        data: bytes::Bytes,
        _: Class,
        mode: Mode,
    ) -> Result<Stored> {
        self.put_single(key, data, mode).await
    }

    async fn read(&self, key: &str, version: Option<&str>) -> Result<Option<Body>> {
        let opts = GetOptions {
            version: version.map(str::to_string),
            ..Default::default()
        };
        let Some(r) = self.get_with(key, opts).await? else {
            return Ok(None);
        };
        let stream = r
            .into_stream()
            .map(|c| c.map_err(|e| std::io::Error::other(e.to_string())));
        let reader = tokio_util::io::StreamReader::new(stream);
        Ok(Some(Box::new(IdleTimeout::new(reader, self.timeout))))
    }

    async fn read_tail(&self, key: &str, n: u64, version: Option<&str>) -> Result<Option<Vec<u8>>> {
        // Azure takes no suffix range ("the last n bytes"): the size first.
        let meta = GetOptions {
            head: true,
            version: version.map(str::to_string),
            ..Default::default()
        };
        let Some(head) = self.get_with(key, meta).await? else {
            return Ok(None);
        };
        let size = head.meta.size;
        if size == 0 {
            return Ok(Some(Vec::new()));
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(size.saturating_sub(n)..size)),
            version: version.map(str::to_string),
            ..Default::default()
        };
        let Some(r) = self.get_with(key, opts).await? else {
            return Ok(None);
        };
        let data = tokio::time::timeout(self.timeout, r.bytes())
            .await
            .map_err(|_| anyhow!("no data for {:?}", self.timeout))?
            .map_err(|e| az_err("GET", &self.locate(key), e))?;
        Ok(Some(data.to_vec()))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        match self.client.head(&self.path(key)).await {
            Ok(m) => {
                let retain_until = match &self.immutability {
                    Some(p) => {
                        p.until(&format!("{}{key}", self.prefix), &self.locate(key))
                            .await?
                    }
                    None => None,
                };
                Ok(Some(ObjectMeta {
                    key: key.to_string(),
                    size: m.size,
                    modified: Some(m.last_modified),
                    retain_until,
                    version: m.version,
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(az_err("HEAD", &self.locate(key), e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_from(prefix, None).await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectMeta>> {
        self.list_from(prefix, Some(after)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.client.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(az_err("DELETE", &self.locate(key), e)),
        }
    }

    async fn object_lock(&self) -> Result<bool> {
        Ok(self.immutability.is_some())
    }

    async fn protect(&self, key: &str) -> Result<()> {
        if let Some(p) = &self.immutability {
            p.set(&format!("{}{key}", self.prefix), None, &self.locate(key))
                .await?;
        }
        Ok(())
    }

    fn locate(&self, key: &str) -> String {
        format!(
            "az://{}/{}/{}{key}",
            self.account, self.container, self.prefix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_the_services_answer_on_one_line() {
        let raw = "The operation lacked the necessary privileges to complete for path pg/wal/x: Error performing GET http://127.0.0.1:1/devstoreaccount1/walvault/pg/wal/x in 3ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>AuthorizationFailure</Code>\n  <Message>Server failed to authenticate the request.\nRequestId:5e7d\nTime:2026-12-02T07:10:00Z</Message>\n</Error>";
        assert_eq!(
            answer(raw),
            "AuthorizationFailure: Server failed to authenticate the request. (HTTP 403)"
        );
        assert_eq!(
            answer("error sending request\n  for url"),
            "error sending request for url"
        );
    }

    #[test]
    fn reads_a_connection_string() {
        let c = parse_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
        )
        .unwrap();
        assert_eq!(
            c,
            ConnectionString {
                account: Some("devstoreaccount1".into()),
                key: Some("a2V5".into()),
                sas: None,
                endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            }
        );
        let e = parse_connection_string("AccountName=a;secretvalue").unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("not KEY=VALUE") && !e.contains("secretvalue"),
            "{e}"
        );
    }
}
