//! TLS from PEM files: a server configuration that is rebuilt when its
//! files change (Kubernetes rotates mounted secrets in place), and the
//! principal a client certificate maps to.
//!
//! The mapping rule (documented in README "Security"): a verified client
//! certificate authenticates as `User:` + the subject's common name (CN);
//! a certificate without a CN uses its first DNS name, then its first
//! e-mail address, from the subject alternative names. A certificate with
//! none of these authenticates nobody.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Principal;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// rustls refused the combination.
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The files one listener's TLS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that sign client certificates; without it no
    /// client certificate is asked for.
    pub ca: Option<PathBuf>,
}

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Verified if presented (callers may use a token instead).
    Optional,
    /// Required: the internal listener between brokers.
    Required,
}

/// The crypto provider every TLS configuration uses (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// The certificates in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// A root store from a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// Builds a server configuration from `files`; `alpn` lists the protocols
/// offered (`h2` for gRPC).
pub fn server_config(
    files: &TlsFiles,
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let verifier = match (&files.ca, auth) {
        (Some(ca), _) => {
            let b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider());
            let b = if auth == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| TlsError::Config(e.to_string()))?
        }
        (None, ClientAuth::Required) => {
            return Err(TlsError::Config(
                "client certificates are required here, so a CA file must be given".into(),
            ))
        }
        (None, ClientAuth::Optional) => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What identifies a file's version: modification time and length.
pub type Stamp = Option<(SystemTime, u64)>;

/// The stamps of a set of TLS files.
pub fn stamps_of(files: &TlsFiles) -> Vec<Stamp> {
    let mut s = vec![stamp(&files.cert), stamp(&files.key)];
    if let Some(ca) = &files.ca {
        s.push(stamp(ca));
    }
    s
}

/// Something built from TLS files that follows them.
pub trait Reload: Send + Sync {
    /// Rebuilds from the files if one changed since the last load. On an
    /// error (say, a certificate written before its key) the old settings
    /// stay and the next call tries again. Blocking.
    fn reload_if_changed(&self) -> Result<bool, TlsError>;
    /// The files it follows.
    fn files(&self) -> &TlsFiles;
}

fn stamp(path: &Path) -> Stamp {
    // `metadata` follows symlinks: Kubernetes swaps a `..data` link.
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A server configuration that follows its files.
pub struct ReloadingConfig {
    files: TlsFiles,
    auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
    /// Swapped whole on reload; each handshake clones the `Arc`.
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' stamps when `current` was built (only the reload task
    /// takes it).
    stamps: Mutex<Vec<Stamp>>,
}

impl std::fmt::Debug for ReloadingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingConfig {
    /// Loads the files now (an error here stops the node from starting).
    pub fn load(files: TlsFiles, auth: ClientAuth, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps_of(&files);
        let config = server_config(&files, auth, alpn)?;
        Ok(Arc::new(Self {
            files,
            auth,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().clone()
    }
}

impl Reload for ReloadingConfig {
    fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps_of(&self.files);
        let mut stamps = self.stamps.lock();
        if *stamps == now {
            return Ok(false);
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|p| p.as_slice()).collect();
        let config = server_config(&self.files, self.auth, &alpn)?;
        *self.current.write() = Arc::new(config);
        *stamps = now;
        Ok(true)
    }
}

/// The principal a (verified) client certificate maps to; see the module
/// documentation for the rule.
pub fn principal_of(cert: &CertificateDer<'_>) -> Option<Principal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed
        .subject()
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
    {
        return Some(Principal::user(cn));
    }
    let san = parsed.subject_alternative_name().ok().flatten()?;
    let names = &san.value.general_names;
    let dns = names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let email = names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::RFC822Name(e) => Some(*e),
        _ => None,
    });
    dns.or(email).map(Principal::user)
}
