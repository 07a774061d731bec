//! A repository in an S3 bucket (AWS S3, MinIO, or any S3-compatible server).
//!
//! Puts send the body's CRC-32 as `x-amz-checksum-crc32` in a header (never in a streaming
//! trailer, which some S3-compatible servers reject), so the server verifies the bytes on
//! receipt; create-only puts use `If-None-Match: *`.

use std::time::Duration;

use async_trait::async_trait;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use bytes::Bytes;

use super::{
    ObjectBody, ObjectMeta, ObjectVersion, Protected, PutBody, PutIf, PutMode, PutPayload, Storage,
    StorageError,
};

/// S3 settings that the AWS SDK's default chain does not cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL for S3-compatible servers; otherwise AWS_ENDPOINT_URL or AWS itself.
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` (MinIO and most S3-compatible servers).
    pub path_style: bool,
}

#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

/// Concurrent conditional puts may be answered 409 while another is in flight: retry.
const CONFLICT_RETRIES: u32 = 10;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;

impl S3Storage {
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
    ) -> Result<Self, StorageError> {
        // S3-compatible servers rarely care about the region, but the SDK insists on one.
        let endpoint_given =
            options.endpoint.is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
        let shared = crate::aws::shared_config(endpoint_given).await;
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .build();
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .force_path_style(options.path_style)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenSupported);
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(S3Storage {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// One PutObject, conditional or not; returns the stored object's ETag (an empty version
    /// when the server names none, which no conditional write then matches).
    async fn send_put(
        &self,
        key: &str,
        object_key: &str,
        payload: &PutPayload,
        condition: Option<&PutIf>,
    ) -> Result<ObjectVersion, StorageError> {
        let checksum = aws_smithy_types::base64::encode(payload.crc32.to_be_bytes());
        for attempt in 0.. {
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(object_key)
                .content_length(payload.len as i64)
                .checksum_crc32(&checksum)
                .body(body_of(payload).await?);
            request = match condition {
                None => request,
                Some(PutIf::Absent) => request.if_none_match("*"),
                Some(PutIf::Matches(version)) => request.if_match(version.as_str()),
            };
            match request.send().await {
                Ok(response) => {
                    return Ok(ObjectVersion::new(response.e_tag().unwrap_or_default()));
                }
                Err(e) => match (status_of(&e), condition) {
                    (Some(412), Some(PutIf::Absent)) => {
                        return Err(StorageError::AlreadyExists {
                            key: key.to_owned(),
                        });
                    }
                    // 404: the object to replace is gone (some servers answer so for If-Match).
                    (Some(412) | Some(404), Some(PutIf::Matches(_))) => {
                        return Err(StorageError::Changed {
                            key: key.to_owned(),
                        });
                    }
                    (Some(409), _) if attempt < CONFLICT_RETRIES => {
                        tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
                    }
                    _ => return Err(self.error("put", key, e)),
                },
            }
        }
        unreachable!("the retry loop returns")
    }

    /// GetObject with the server's checksum check asked for.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| self.error_or_not_found("get", key, e))
    }

    fn version_of(
        &self,
        op: &'static str,
        key: &str,
        e_tag: Option<&str>,
    ) -> Result<ObjectVersion, StorageError> {
        e_tag
            .map(ObjectVersion::new)
            .ok_or_else(|| StorageError::S3 {
                op,
                location: self.url(key),
                message: "the server sent no ETag, which conditional writes need".into(),
                status: None,
                transient: false,
            })
    }

    fn object_key(&self, key: &str) -> Result<String, StorageError> {
        super::validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// 404 is `NotFound`; anything else is an S3 error.
    fn error_or_not_found<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match status_of(&err) {
            Some(404) => StorageError::NotFound {
                key: key.to_owned(),
            },
            _ => self.error(op, key, err),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    fn error<E>(&self, op: &'static str, key: &str, err: SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = status_of(&err);
        if let Some(problem) = configuration_problem(&err, &self.location()) {
            return StorageError::Config(problem);
        }
        let mut message = match err.code() {
            Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
            None => error_chain(&err),
        };
        if message.contains("Connection refused") {
            message.push_str(
                " (nothing listens at the S3 endpoint: check s3_endpoint, PITR_S3_ENDPOINT, \
                 AWS_ENDPOINT_URL)",
            );
        }
        if status == Some(403) && matches!(op, "get" | "head") {
            message.push_str(
                " (S3 also answers 403 for a missing key when the credentials lack \
                 s3:ListBucket on the bucket: grant it, see docs/operations.md)",
            );
        }
        StorageError::S3 {
            op,
            location: self.url(key),
            transient: is_transient(&err, status),
            message,
            status,
        }
    }
}

impl S3Storage {
    /// Why a delete of `key` was refused, when a retention lock refused it: the lock's end
    /// (GetObjectRetention), a legal hold, or an error that names the lock.
    async fn protection(&self, key: &str, code: &str, message: &str) -> Option<Protected> {
        let object_key = self.object_key(key).ok()?;
        let retention = self
            .client
            .get_object_retention()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await;
        if let Some(until) = retention
            .ok()
            .and_then(|r| r.retention)
            .and_then(|r| r.retain_until_date)
        {
            let until = until
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap_or_else(|_| until.to_string());
            return Some(Protected {
                key: key.to_owned(),
                until: Some(until),
            });
        }
        let hold = self
            .client
            .get_object_legal_hold()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await;
        let held = hold
            .ok()
            .and_then(|h| h.legal_hold)
            .and_then(|h| h.status)
            .is_some_and(|s| s == aws_sdk_s3::types::ObjectLockLegalHoldStatus::On);
        let names_lock = {
            let text = format!("{code} {message}").to_ascii_lowercase();
            [
                "object lock",
                "objectlock",
                "retention",
                "legal hold",
                "worm",
            ]
            .iter()
            .any(|word| text.contains(word))
        };
        (held || names_lock).then(|| Protected {
            key: key.to_owned(),
            until: None,
        })
    }
}

async fn body_of(payload: &PutPayload) -> Result<ByteStream, StorageError> {
    match &payload.body {
        PutBody::Bytes(bytes) => Ok(ByteStream::from(bytes.clone())),
        PutBody::File(path) => ByteStream::from_path(path)
            .await
            .map_err(|e| StorageError::io("read", path.display(), std::io::Error::other(e))),
    }
}

/// The error and its causes, each once, on one line: the SDK's `DisplayErrorContext` appends
/// a debug dump of the whole error (kilobytes), which would fill PostgreSQL's log.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(error) = next {
        let text = error.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ").replace('\n', " ")
}

/// What the settings or the environment must change, when that is why a request failed: no
/// credentials found, credentials the server refuses, an endpoint host that does not resolve.
/// Retrying cannot help these, and each would otherwise look like a network failure.
fn configuration_problem<E>(err: &SdkError<E, HttpResponse>, location: &str) -> Option<String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    const WHERE: &str = "in the environment of the user running pitr (for archive_command and \
                         restore_command: the PostgreSQL server's)";
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = next {
        if let Some(credentials) = error.downcast_ref::<CredentialsError>() {
            let profile = std::env::var("AWS_PROFILE")
                .map(|p| format!(" (the profile {p} of AWS_PROFILE gave none)"))
                .unwrap_or_default();
            let none_found = format!(
                "no AWS credentials found for {location}{profile}: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, {WHERE}"
            );
            let detail = error_chain(credentials);
            return Some(match credentials {
                CredentialsError::CredentialsNotLoaded(_) => none_found,
                // The instance metadata service is the default chain's last resort: its
                // failure (off EC2, or an instance without a role) means none was found.
                _ if detail.contains("IMDS") => format!(
                    "{none_found} (the EC2 instance metadata service, where the SDK looks last: \
                     {detail})"
                ),
                other => format!(
                    "the AWS credentials for {location} could not be loaded ({}): check \
                     AWS_PROFILE and the AWS config files {WHERE}",
                    error_chain(other)
                ),
            });
        }
        let text = error.to_string();
        // The SDK's identity cache gave up on a slow provider (the instance metadata service
        // off EC2, where it never answers); its error type is private.
        if text.contains("identity resolver timed out") {
            return Some(format!(
                "no AWS credentials found for {location} ({text}: the last place the SDK \
                 looks is the EC2 instance metadata service): set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, {WHERE}"
            ));
        }
        if text.contains("failed to lookup address information")
            && !text.contains("Temporary failure")
        {
            return Some(format!(
                "the S3 endpoint for {location} does not resolve ({text}): check s3_endpoint \
                 (PITR_S3_ENDPOINT, AWS_ENDPOINT_URL)"
            ));
        }
        next = error.source();
    }
    match err.code() {
        Some(
            code @ ("InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidToken"
            | "ExpiredToken"
            | "TokenRefreshRequired"),
        ) => Some(format!(
            "S3 refused the AWS credentials for {location} ({code}{}): check \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, {WHERE}",
            err.message().map(|m| format!(": {m}")).unwrap_or_default()
        )),
        _ => None,
    }
}

/// Throttling, server errors, timeouts and connections that failed or broke: another try may
/// well succeed. (The SDK's own retries are off: `RetryingStorage` is the one policy.)
fn is_transient<E: ProvideErrorMetadata>(
    err: &SdkError<E, HttpResponse>,
    status: Option<u16>,
) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => {
            matches!(status, Some(408 | 429 | 500 | 502 | 503 | 504))
                || matches!(
                    err.code(),
                    Some(
                        "SlowDown"
                            | "Throttling"
                            | "ThrottlingException"
                            | "RequestTimeout"
                            | "InternalError"
                            | "ServiceUnavailable"
                    )
                )
        }
    }
}

fn status_of<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response()
        .map(|response| response.status().as_u16())
}

#[async_trait]
impl Storage for S3Storage {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    async fn put(&self, key: &str, payload: PutPayload, mode: PutMode) -> Result<(), StorageError> {
        let object_key = self.object_key(key)?;
        if mode == PutMode::Create {
            // Servers that ignore If-None-Match still must not overwrite: look first. Without
            // s3:ListBucket a missing key answers 403 (AWS documents it): the look tells
            // nothing then, and If-None-Match alone keeps the put create-only.
            match self.head(key).await {
                Ok(_) => {
                    return Err(StorageError::AlreadyExists {
                        key: key.to_owned(),
                    });
                }
                Err(StorageError::NotFound { .. })
                | Err(StorageError::S3 {
                    status: Some(403), ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        let condition = (mode == PutMode::Create).then_some(PutIf::Absent);
        self.send_put(key, &object_key, &payload, condition.as_ref())
            .await
            .map(drop)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ObjectVersion), StorageError> {
        let response = self.get_object(key).await?;
        let version = self.version_of("get", key, response.e_tag())?;
        let body = response
            .body
            .collect()
            .await
            .map_err(|e| StorageError::io("read", self.url(key), std::io::Error::other(e)))?;
        Ok((body.into_bytes(), version))
    }

    async fn put_if(
        &self,
        key: &str,
        payload: PutPayload,
        condition: PutIf,
    ) -> Result<ObjectVersion, StorageError> {
        let object_key = self.object_key(key)?;
        self.send_put(key, &object_key, &payload, Some(&condition))
            .await
    }

    async fn delete_if(&self, key: &str, version: &ObjectVersion) -> Result<bool, StorageError> {
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .if_match(version.as_str())
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_of(&e), Some(412) | Some(404)) => Ok(false),
            Err(e) => Err(self.error("delete", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<ObjectBody, StorageError> {
        let response = self.get_object(key).await?;
        Ok(ObjectBody::Stream(Box::new(
            response.body.into_async_read(),
        )))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let response = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .send()
            .await
            .map_err(|e| self.error_or_not_found("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: response.content_length.unwrap_or(0).max(0) as u64,
            modified: response.last_modified().and_then(system_time),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                found.push(ObjectMeta {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object.last_modified().and_then(system_time),
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn list_folders(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{prefix}", self.prefix))
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", prefix, e))?;
            for common in page.common_prefixes() {
                if let Some(folder) = common.prefix().and_then(|p| p.strip_prefix(&self.prefix)) {
                    found.push(folder.to_owned());
                }
            }
        }
        found.sort();
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .send()
            .await
            .map_err(|e| self.error("delete", key, e))?;
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<Vec<Protected>, StorageError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let mut protected = Vec::new();
        for batch in keys.chunks(DELETE_BATCH) {
            let mut objects = Vec::with_capacity(batch.len());
            for key in batch {
                let identifier = ObjectIdentifier::builder()
                    .key(self.object_key(key)?)
                    .build()
                    .map_err(|e| StorageError::InvalidKey(format!("{key}: {e}")))?;
                objects.push(identifier);
            }
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::InvalidKey(e.to_string()))?;
            let response = match self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
            {
                Ok(response) => response,
                // Some S3-compatible stores (Google Cloud Storage's XML API) lack
                // DeleteObjects: one request per key there.
                Err(e) if status_of(&e) == Some(501) || e.code() == Some("NotImplemented") => {
                    for key in batch {
                        self.delete(key).await?;
                    }
                    continue;
                }
                Err(e) => return Err(self.error("delete", &batch[0], e)),
            };
            for failed in response.errors() {
                let object_key = failed.key().unwrap_or_default();
                let key = object_key.strip_prefix(&self.prefix).unwrap_or(object_key);
                let (code, message) = (
                    failed.code().unwrap_or("unknown"),
                    failed.message().unwrap_or("no message"),
                );
                if code == "NoSuchKey" {
                    continue;
                }
                if let Some(lock) = self.protection(key, code, message).await {
                    protected.push(lock);
                    continue;
                }
                return Err(StorageError::S3 {
                    op: "delete",
                    location: self.url(key),
                    message: format!("{code}: {message}"),
                    status: None,
                    transient: matches!(
                        code,
                        "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
                    ),
                });
            }
        }
        Ok(protected)
    }
}

/// An S3 time as the standard library's; None where it does not fit.
fn system_time(time: &aws_sdk_s3::primitives::DateTime) -> Option<std::time::SystemTime> {
    std::time::SystemTime::try_from(*time).ok()
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::ConnectorError;
    use aws_sdk_s3::operation::get_object::GetObjectError;

    use super::*;

    /// A request that failed before it was sent, for `cause`, as the SDK reports it.
    fn dispatch_failure(
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> SdkError<GetObjectError, HttpResponse> {
        SdkError::dispatch_failure(ConnectorError::other(Box::new(cause), None))
    }

    #[test]
    fn credentials_the_chain_did_not_find_are_a_setting_to_change() {
        let found = configuration_problem(
            &dispatch_failure(CredentialsError::not_loaded("no providers in chain")),
            "s3://b/p",
        )
        .unwrap();
        assert!(
            found.starts_with("no AWS credentials found for s3://b/p"),
            "{found}"
        );
        assert!(found.contains("AWS_ACCESS_KEY_ID"), "{found}");
        let imds = configuration_problem(
            &dispatch_failure(CredentialsError::provider_error(
                "failed to load IMDS session token: request forbidden",
            )),
            "s3://b/p",
        )
        .unwrap();
        assert!(imds.starts_with("no AWS credentials found"), "{imds}");
        assert!(imds.ends_with("request forbidden)"), "{imds}");
        assert!(!imds.contains('\n'), "{imds}");
    }

    #[test]
    fn network_failures_stay_transient_and_short() {
        let refused = dispatch_failure(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(configuration_problem(&refused, "s3://b/p"), None);
        assert!(is_transient(&refused, None));
        let chain = error_chain(&refused);
        assert!(
            chain.ends_with("Connection refused (os error 111)"),
            "{chain}"
        );
        // The SDK's debug dump of the error is not in the message.
        assert!(!chain.contains("DispatchFailure"), "{chain}");
    }
}
