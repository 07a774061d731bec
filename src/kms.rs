//! AWS KMS as a key service: wraps and unwraps an encrypted repository's data key.
//!
//! The data key goes to KMS `Encrypt` under `kms_key_id` with an encryption context that names
//! its purpose; `Decrypt` gives the same context and the same `KeyId`, so a blob of another
//! key, or one made for another purpose, is refused by KMS itself. The client follows the AWS
//! SDK's own chain for credentials, region and endpoint (`AWS_ENDPOINT_URL_KMS`,
//! `AWS_ENDPOINT_URL`, profiles): pitr's `s3_endpoint` names the repository's server, not KMS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::catalog::keys::KeyService;
use crate::config::Settings;
use crate::error::Error;

/// The encryption context of every pitr wrap: KMS binds the blob to it, and CloudTrail shows
/// it beside each Decrypt.
const CONTEXT_KEY: &str = "pitr";
const CONTEXT_VALUE: &str = "repository data key";

/// The key service for `kms_key_id`. Nothing is read or connected until the first call.
pub fn key_service(_settings: &Settings) -> Result<Arc<dyn KeyService>, Error> {
    Ok(Arc::new(AwsKms::default()))
}

/// AWS KMS (or a KMS-compatible server), reached through the AWS SDK's default chain.
#[derive(Debug, Default)]
pub struct AwsKms {
    client: OnceCell<KmsClient>,
}

#[derive(Debug)]
struct KmsClient {
    client: Client,
    /// For messages: a key not found is most often a key of another region.
    region: String,
}

impl AwsKms {
    async fn client(&self) -> &KmsClient {
        self.client.get_or_init(connect).await
    }
}

async fn connect() -> KmsClient {
    let endpoint_given = ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
    let shared = crate::aws::shared_config(endpoint_given).await;
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .operation_attempt_timeout(Duration::from_secs(30))
        .build();
    // The SDK's standard retries stay on: KMS throttles (ThrottlingException) when many
    // archive-push processes unwrap the data key at once.
    let config = aws_sdk_kms::config::Builder::from(&shared)
        .timeout_config(timeouts)
        .build();
    KmsClient {
        region: shared
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".to_owned()),
        client: Client::from_conf(config),
    }
}

fn context() -> HashMap<String, String> {
    HashMap::from([(CONTEXT_KEY.to_owned(), CONTEXT_VALUE.to_owned())])
}

#[async_trait]
impl KeyService for AwsKms {
    async fn encrypt(&self, key_id: &str, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let kms = self.client().await;
        let output = kms
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(context()))
            .send()
            .await
            .map_err(|e| message("Encrypt", &kms.region, e))?;
        output
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| format!("Encrypt in {} answered without a ciphertext", kms.region))
    }

    async fn decrypt(&self, key_id: &str, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        let kms = self.client().await;
        let output = kms
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob))
            .set_encryption_context(Some(context()))
            .send()
            .await
            .map_err(|e| message("Decrypt", &kms.region, e))?;
        output
            .plaintext
            .map(|p| Zeroizing::new(p.into_inner()))
            .ok_or_else(|| format!("Decrypt in {} answered without a plaintext", kms.region))
    }
}

/// One line: the operation, the region, what KMS said and, for the usual causes, what to do.
/// The caller puts the key id in front; neither request nor response body is shown.
fn message<E, R>(op: &str, region: &str, err: SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let said = match err.code() {
        Some(code) => format!("{code}: {}", err.message().unwrap_or("no message")),
        // Not an answer of KMS (unreachable, timed out, no credentials): the causes' own
        // words, without the SDK's debug dump, and where it was sent.
        None => {
            let mut causes: Vec<String> = Vec::new();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(error) = cause {
                let text = error.to_string();
                if !causes.iter().any(|seen| seen.contains(&text)) {
                    causes.push(text);
                }
                cause = error.source();
            }
            let endpoint = ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"]
                .iter()
                .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
                .map(|url| format!(" (endpoint {url})"))
                .unwrap_or_default();
            format!("{}{endpoint}", causes.join(": "))
        }
    };
    let hint = match err.code() {
        Some("NotFoundException") => {
            " (no such key in this account and region: check kms_key_id, AWS_REGION and the \
             credentials' account)"
        }
        Some("AccessDeniedException") => {
            " (the credentials may not use this key: grant kms:Encrypt and kms:Decrypt on it)"
        }
        Some("DisabledException") => " (the key is disabled: enable it in KMS)",
        Some("KMSInvalidStateException") => {
            " (the key is pending deletion or not usable now: cancel its deletion in KMS)"
        }
        Some("IncorrectKeyException") => {
            " (the stored wrap was made with another KMS key than this one)"
        }
        Some("InvalidCiphertextException") => {
            " (the stored wrap is not a pitr data key of this KMS key: damaged, or made for \
             another purpose)"
        }
        _ => "",
    };
    format!("{op} in {region}: {said}{hint}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use aws_sdk_kms::error::{ErrorMetadata, SdkError};
    use aws_sdk_kms::operation::decrypt::DecryptError;

    use super::message;

    fn answered(code: &str, said: &str) -> SdkError<DecryptError, ()> {
        let meta = ErrorMetadata::builder().code(code).message(said).build();
        SdkError::service_error(DecryptError::generic(meta), ())
    }

    #[test]
    fn messages_are_one_line_with_what_kms_said_and_what_to_do() {
        assert_eq!(
            message(
                "Decrypt",
                "eu-west-1",
                answered(
                    "DisabledException",
                    "arn:aws:kms:eu-west-1:1:key/k is\ndisabled."
                )
            ),
            "Decrypt in eu-west-1: DisabledException: arn:aws:kms:eu-west-1:1:key/k is \
             disabled. (the key is disabled: enable it in KMS)"
        );
        assert_eq!(
            message(
                "Encrypt",
                "us-east-1",
                answered(
                    "AccessDeniedException",
                    "User: arn:aws:iam::1:user/u is not authorized"
                )
            ),
            "Encrypt in us-east-1: AccessDeniedException: User: arn:aws:iam::1:user/u is not \
             authorized (the credentials may not use this key: grant kms:Encrypt and \
             kms:Decrypt on it)"
        );
        assert!(
            message(
                "Decrypt",
                "us-east-1",
                answered("NotFoundException", "Key 'k' does not exist")
            )
            .ends_with("check kms_key_id, AWS_REGION and the credentials' account)")
        );
        let unanswered: SdkError<DecryptError, ()> = SdkError::timeout_error("took too long");
        let text = message("Decrypt", "us-east-1", unanswered);
        assert!(text.starts_with("Decrypt in us-east-1: "), "{text}");
        assert!(text.contains("took too long"), "{text}");
        assert!(
            !text.contains('\n') && !text.contains("TimeoutError"),
            "{text}"
        );
    }
}
