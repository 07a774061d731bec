//! TLS to PostgreSQL with libpq's rules: `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, on
//! rustls (through tokio-postgres-rustls). What to verify is a pure decision
//! ([`verification`]); the files are read in [`client_config`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "invalid sslmode value \"{text}\" (disable, allow, prefer, require, \
                     verify-ca or verify-full)"
                ));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// The TLS settings of a connection, file names resolved (libpq's defaults under
/// `~/.postgresql/` when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub rootcert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `sslrootcert=system`: the operating system's CAs instead of a file.
pub const SYSTEM_ROOTS: &str = "system";

/// How the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Any certificate (require, prefer, allow without a root certificate file).
    None,
    /// Signed by a CA of the root certificate file, whatever its name (verify-ca, and
    /// require/prefer/allow when the file exists, as libpq does).
    Chain,
    /// And naming the host (verify-full).
    ChainAndName,
}

/// verify-ca and verify-full without a root certificate file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootCertMissing;

/// libpq's rule (`initialize_SSL`): a root certificate file that exists is always used; one
/// that does not is an error only for verify-ca and verify-full.
pub fn verification(mode: SslMode, rootcert_exists: bool) -> Result<Verification, RootCertMissing> {
    match (mode, rootcert_exists) {
        (SslMode::VerifyFull, true) => Ok(Verification::ChainAndName),
        (SslMode::VerifyFull | SslMode::VerifyCa, false) => Err(RootCertMissing),
        (_, true) => Ok(Verification::Chain),
        (_, false) => Ok(Verification::None),
    }
}

/// libpq refuses a private key that others may read: 0600 or less when the user owns it,
/// 0640 or less when root does (`initialize_SSL`).
pub fn key_mode_ok(mode: u32, owner: u32, euid: u32) -> bool {
    !(owner == euid && mode & 0o077 != 0 || owner == 0 && mode & 0o037 != 0)
}

/// The crypto provider pitr's TLS uses: ring, which the tree already builds (aws-sdk's
/// aws-lc-rs is enabled in rustls too, so the process default would be ambiguous).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the TLS settings cannot be used; names files, never a password.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "root certificate file \"{path}\" does not exist; either provide the file or change \
         sslmode to disable server certificate verification (sslmode={mode} needs it)"
    )]
    RootCertMissing { path: PathBuf, mode: SslMode },
    #[error("cannot read root certificate file \"{path}\": {reason}")]
    RootCertUnreadable { path: PathBuf, reason: String },
    #[error("root certificate file \"{path}\" holds no usable certificate")]
    RootCertEmpty { path: PathBuf },
    #[error("sslrootcert=system: no trusted CA certificate found on this system ({0})")]
    NoSystemRoots(String),
    #[error("cannot read certificate file \"{path}\": {reason}")]
    CertUnreadable { path: PathBuf, reason: String },
    #[error("certificate present, but not private key file \"{path}\": {source}")]
    KeyMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("private key file \"{path}\" is not a regular file")]
    KeyNotAFile { path: PathBuf },
    #[error(
        "private key file \"{path}\" has group or world access; file must have permissions \
         u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or \
         less if owned by root"
    )]
    KeyPermissions { path: PathBuf },
    #[error("cannot read private key file \"{path}\": {reason}")]
    KeyUnreadable { path: PathBuf, reason: String },
    #[error("TLS client set-up: {0}")]
    Rustls(String),
}

/// The rustls configuration for `settings`; `None` for sslmode=disable.
pub fn client_config(settings: &TlsSettings) -> Result<Option<ClientConfig>, TlsSetupError> {
    if settings.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let system_roots = settings.rootcert.as_os_str() == SYSTEM_ROOTS;
    let verification = verification(settings.mode, system_roots || settings.rootcert.is_file())
        .map_err(|RootCertMissing| TlsSetupError::RootCertMissing {
            path: settings.rootcert.clone(),
            mode: settings.mode,
        })?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(AnyCertificate(provider.clone())),
        Verification::Chain | Verification::ChainAndName => {
            let roots = if system_roots {
                system_root_store()?
            } else {
                root_store(&settings.rootcert)?
            };
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            if verification == Verification::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_certificate(settings)? {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            TlsSetupError::Rustls(format!(
                "client certificate \"{}\" and key \"{}\": {e}",
                settings.cert.display(),
                settings.key.display()
            ))
        })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

/// The operating system's trusted CAs (`sslrootcert=system`, PostgreSQL 16's keyword).
fn system_root_store() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(TlsSetupError::NoSystemRoots(errors.join("; ")));
    }
    Ok(roots)
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::RootCertUnreadable {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsSetupError::RootCertEmpty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

type ClientCertificate = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The client certificate and key, when the certificate file exists (libpq ignores a
/// missing one, even when named).
fn client_certificate(settings: &TlsSettings) -> Result<Option<ClientCertificate>, TlsSetupError> {
    use std::os::unix::fs::MetadataExt;
    if !settings.cert.is_file() {
        return Ok(None);
    }
    let chain = CertificateDer::pem_file_iter(&settings.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::CertUnreadable {
            path: settings.cert.clone(),
            reason: e.to_string(),
        })?;
    let path = settings.key.clone();
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(source) => return Err(TlsSetupError::KeyMissing { path, source }),
    };
    if !meta.is_file() {
        return Err(TlsSetupError::KeyNotAFile { path });
    }
    let euid = crate::ownership::effective_uid();
    if !key_mode_ok(meta.mode(), meta.uid(), euid) {
        return Err(TlsSetupError::KeyPermissions { path });
    }
    let key = PrivateKeyDer::from_pem_file(&path).map_err(|e| TlsSetupError::KeyUnreadable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    Ok(Some((chain, key)))
}

/// What failed in a TLS handshake, in the words an operator acts on.
pub fn describe(error: &rustls::Error, settings: &TlsSettings, host: &str) -> String {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer)
            if settings.rootcert.as_os_str() == SYSTEM_ROOTS =>
        {
            "server certificate not signed by a CA this system trusts (sslrootcert=system)".into()
        }
        E::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "server certificate not signed by the CA in {}",
            settings.rootcert.display()
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            format!("server certificate does not match host name \"{host}\"")
        }
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "server certificate has expired".into(),
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "server certificate is not valid yet".into(),
        E::InvalidCertificate(other) => format!("server certificate rejected: {other:?}"),
        E::AlertReceived(alert) => {
            format!("the server ended the TLS handshake ({alert:?}; see the server log)")
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// verify-ca: the chain up to a trusted CA, not the name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name only after the chain: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// require without a root certificate: encryption against passive listeners, no proof of
/// who the server is (libpq's documented meaning). The handshake signature is still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_verification_rules() {
        use SslMode::*;
        assert_eq!(
            verification(VerifyFull, true),
            Ok(Verification::ChainAndName)
        );
        assert_eq!(verification(VerifyCa, true), Ok(Verification::Chain));
        // require with a root certificate file behaves like verify-ca.
        assert_eq!(verification(Require, true), Ok(Verification::Chain));
        assert_eq!(verification(Prefer, true), Ok(Verification::Chain));
        assert_eq!(verification(Require, false), Ok(Verification::None));
        assert_eq!(verification(Prefer, false), Ok(Verification::None));
        assert_eq!(verification(VerifyCa, false), Err(RootCertMissing));
        assert_eq!(verification(VerifyFull, false), Err(RootCertMissing));
    }

    #[test]
    fn sslmode_names() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(mode.parse::<SslMode>().unwrap().to_string(), mode);
        }
        assert!("verify_full".parse::<SslMode>().is_err());
    }

    #[test]
    fn private_key_permissions_as_libpq_checks_them() {
        assert!(key_mode_ok(0o100600, 1000, 1000));
        assert!(key_mode_ok(0o100400, 1000, 1000));
        assert!(!key_mode_ok(0o100640, 1000, 1000));
        assert!(!key_mode_ok(0o100604, 1000, 1000));
        // Owned by root and read by another user: group read is allowed.
        assert!(key_mode_ok(0o100640, 0, 1000));
        assert!(!key_mode_ok(0o100660, 0, 1000));
        assert!(!key_mode_ok(0o100644, 0, 1000));
        // Root reading its own key: 0600.
        assert!(!key_mode_ok(0o100640, 0, 0));
        // Someone else's key: the server will judge.
        assert!(key_mode_ok(0o100644, 1001, 1000));
    }

    #[test]
    fn a_missing_root_certificate_is_named() {
        let settings = TlsSettings {
            mode: SslMode::VerifyCa,
            rootcert: "/nonexistent/root.crt".into(),
            cert: "/nonexistent/postgresql.crt".into(),
            key: "/nonexistent/postgresql.key".into(),
        };
        let error = client_config(&settings).unwrap_err();
        assert!(matches!(error, TlsSetupError::RootCertMissing { .. }));
        assert!(
            error
                .to_string()
                .starts_with("root certificate file \"/nonexistent/root.crt\" does not exist"),
            "{error}"
        );
        let require = TlsSettings {
            mode: SslMode::Require,
            ..settings
        };
        assert!(client_config(&require).unwrap().is_some());
    }
}
