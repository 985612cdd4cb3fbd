//! Per-blob immutability on Azure (`azure.immutability_mode`): the two requests
//! object_store does not make. Set Blob Immutability Policy after each write,
//! and a blob's policy end from Get Blob Properties for retention. Both are
//! signed by object_store's own authorizer with the store's credential (Shared
//! Key, SAS or an Entra ID token), so whatever credential reads and writes the
//! repository protects it too.

use anyhow::{anyhow, Context, Result};
use chrono::{DateTime, Utc};
use object_store::azure::{AzureAuthorizer, AzureCredentialProvider};
use object_store::client::HttpRequestBody;
use std::time::Duration;

/// The service version object_store's own requests use (immutability policies
/// need 2020-06-12 or later).
const VERSION: &str = "2023-11-03";
const UNTIL: &str = "x-ms-immutability-policy-until-date";
const MODE: &str = "x-ms-immutability-policy-mode";

pub struct Immutability {
    http: reqwest::Client,
    credentials: AzureCredentialProvider,
    account: String,
    /// The container's URL, without a trailing '/'.
    container_url: url::Url,
    /// `Unlocked` or `Locked`, as the service spells them.
    mode: String,
    days: i64,
    attempts: u32,
}

/// The date form the service takes and gives (RFC 1123).
fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

impl Immutability {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        credentials: AzureCredentialProvider,
        account: &str,
        endpoint: Option<&str>,
        container: &str,
        mode: &str,
        days: i64,
        attempts: u32,
        timeouts: (Duration, Duration),
    ) -> Result<Immutability> {
        let base = match endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://{account}.blob.core.windows.net"),
        };
        let mut container_url =
            url::Url::parse(&base).with_context(|| format!("azure.endpoint '{base}'"))?;
        container_url
            .path_segments_mut()
            .map_err(|_| anyhow!("azure.endpoint '{base}' cannot hold a path"))?
            .pop_if_empty()
            .push(container);
        // reqwest's TLS takes the process's provider: ring, as everywhere here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.0)
            .read_timeout(timeouts.1)
            .build()
            .context("building the HTTP client for immutability policies")?;
        Ok(Immutability {
            http,
            credentials,
            account: account.to_string(),
            container_url,
            mode: mode.to_string(),
            days,
            attempts: attempts.max(1),
        })
    }

    fn blob_url(&self, blob: &str, query: &[(&str, &str)]) -> url::Url {
        let mut u = self.container_url.clone();
        u.path_segments_mut()
            .expect("checked in new")
            .extend(blob.split('/'));
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    /// Sends one signed request with an empty body, retrying what the service
    /// or the network calls transient. Returns the status and the response.
    async fn send(
        &self,
        method: http::Method,
        url: url::Url,
        headers: &[(&str, String)],
    ) -> Result<reqwest::Response> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let credential = self
                .credentials
                .get_credential()
                .await
                .map_err(|e| anyhow!("getting the Azure credential: {e}"))?;
            let mut b = http::Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .header("x-ms-version", VERSION);
            if method == http::Method::PUT {
                b = b.header(http::header::CONTENT_LENGTH, "0");
            }
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            let mut request = b.body(HttpRequestBody::empty())?;
            AzureAuthorizer::new(&credential, &self.account)
                .try_authorize(&mut request)
                .map_err(|e| anyhow!("signing the request: {e}"))?;
            let (parts, _) = request.into_parts();
            let request = reqwest::Request::try_from(http::Request::from_parts(parts, Vec::new()))?;
            let transient = match self.http.execute(request).await {
                Ok(r) => {
                    let s = r.status().as_u16();
                    if !(s == 429 || (s >= 500 && s != 501)) || attempt >= self.attempts {
                        return Ok(r);
                    }
                    format!("HTTP {s}")
                }
                Err(e) if attempt >= self.attempts => {
                    return Err(anyhow!(
                        "{}; check azure.endpoint and that the storage account is reachable",
                        one_line(&e)
                    ))
                }
                Err(e) => one_line(&e),
            };
            tracing::debug!("immutability request attempt {attempt} failed: {transient}");
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    /// Protects `blob` (at `version` when the write returned one) for the
    /// configured period from now. `location` names it in the error.
    pub async fn set(&self, blob: &str, version: Option<&str>, location: &str) -> Result<()> {
        let until = Utc::now() + chrono::Duration::days(self.days);
        let mut query = vec![("comp", "immutabilityPolicies")];
        if let Some(v) = version {
            query.push(("versionid", v));
        }
        let r = self
            .send(
                http::Method::PUT,
                self.blob_url(blob, &query),
                &[(UNTIL, http_date(until)), (MODE, self.mode.clone())],
            )
            .await
            .with_context(|| format!("Azure immutability policy of {location} failed"))?;
        if r.status().is_success() {
            return Ok(());
        }
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        tracing::debug!("Azure immutability policy answer in full: {body}");
        let hint = if status == 403 {
            "; check the Azure credentials and that their role may set immutability policies"
        } else {
            "; the container needs version-level immutability support (or unset azure.immutability_mode)"
        };
        Err(anyhow!(
            "Azure immutability policy of {location} failed: {}{hint}",
            super::service_answer(&body, status)
        ))
    }

    /// When `blob`'s immutability policy ends, if it has one.
    pub async fn until(&self, blob: &str, location: &str) -> Result<Option<DateTime<Utc>>> {
        let r = self
            .send(http::Method::HEAD, self.blob_url(blob, &[]), &[])
            .await
            .with_context(|| format!("Azure HEAD of {location} failed"))?;
        let status = r.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(anyhow!(
                "Azure HEAD of {location} failed: HTTP {status} (reading its immutability policy)"
            ));
        }
        Ok(r.headers()
            .get(UNTIL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| DateTime::parse_from_rfc2822(v).ok())
            .map(|t| t.with_timezone(&Utc)))
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_the_services_form_both_ways() {
        let t = DateTime::parse_from_rfc3339("2026-12-09T08:05:03Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = http_date(t);
        assert_eq!(s, "Wed, 09 Dec 2026 08:05:03 GMT");
        assert_eq!(DateTime::parse_from_rfc2822(&s).unwrap(), t);
    }

    #[test]
    fn blob_urls_below_the_container() {
        let creds: AzureCredentialProvider =
            std::sync::Arc::new(object_store::StaticCredentialProvider::new(
                object_store::azure::AzureCredential::BearerToken("t".into()),
            ));
        let d = Duration::from_secs(1);
        let emulator = Immutability::new(
            creds.clone(),
            "devstoreaccount1",
            Some("http://127.0.0.1:10000/devstoreaccount1/"),
            "c",
            "Unlocked",
            1,
            1,
            (d, d),
        )
        .unwrap();
        assert_eq!(
            emulator
                .blob_url("pg/wal/000000010000000000000001", &[("comp", "immutabilityPolicies")])
                .as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/c/pg/wal/000000010000000000000001?comp=immutabilityPolicies"
        );
        let cloud = Immutability::new(creds, "acct", None, "c", "Locked", 1, 1, (d, d)).unwrap();
        assert_eq!(
            cloud.blob_url("pg/backups/x y", &[]).as_str(),
            "https://acct.blob.core.windows.net/c/pg/backups/x%20y"
        );
    }
}
