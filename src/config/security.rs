//! `[security]`: TLS files, authorization and super users.

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// TLS and authorization; see README ("Security").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Certificate chain of the client listeners (gRPC and Kafka), PEM.
    pub tls_cert: Option<PathBuf>,
    /// Its key, PEM.
    pub tls_key: Option<PathBuf>,
    /// CA that signs client certificates, PEM (clients may then
    /// authenticate with a certificate).
    pub tls_ca: Option<PathBuf>,
    /// Certificate of the internal listener and of this broker's calls to
    /// others, PEM.
    pub internal_tls_cert: Option<PathBuf>,
    /// Its key, PEM.
    pub internal_tls_key: Option<PathBuf>,
    /// CA that signs every broker's internal certificate, PEM.
    pub internal_tls_ca: Option<PathBuf>,
    /// Enforce ACLs (and require an identity) on every listener.
    pub authorization: bool,
    /// Principals (`User:NAME`) that may do anything.
    pub super_users: Vec<String>,
    /// How often certificate files are checked for changes, ms.
    pub tls_reload_interval_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            internal_tls_cert: None,
            internal_tls_key: None,
            internal_tls_ca: None,
            authorization: false,
            super_users: Vec::new(),
            tls_reload_interval_ms: 10_000,
        }
    }
}

impl SecurityConfig {
    fn files(
        what: &str,
        cert: &Option<PathBuf>,
        key: &Option<PathBuf>,
        ca: &Option<PathBuf>,
    ) -> Result<Option<crate::security::tls::TlsFiles>, Error> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(crate::security::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None) if ca.is_none() => Ok(None),
            _ => Err(Error::Config(format!(
                "{what}: give the certificate and the key together (--{what}-cert and --{what}-key); a CA alone does nothing"
            ))),
        }
    }

    /// The client listeners' TLS files, if TLS is on.
    pub fn client_tls(&self) -> Result<Option<crate::security::tls::TlsFiles>, Error> {
        Self::files("tls", &self.tls_cert, &self.tls_key, &self.tls_ca)
    }

    /// The internal listener's TLS files, if TLS is on there (then the CA
    /// is required: brokers authenticate each other).
    pub fn internal_tls(&self) -> Result<Option<crate::security::tls::TlsFiles>, Error> {
        let files = Self::files(
            "internal-tls",
            &self.internal_tls_cert,
            &self.internal_tls_key,
            &self.internal_tls_ca,
        )?;
        if files.as_ref().is_some_and(|f| f.ca.is_none()) {
            return Err(Error::Config(
                "internal TLS is mutual: --internal-tls-ca must name the CA that signs every broker's certificate".into(),
            ));
        }
        Ok(files)
    }

    /// The settings every listener enforces, checked.
    pub fn access_settings(&self) -> Result<crate::security::SecuritySettings, Error> {
        for u in &self.super_users {
            crate::security::acl::validate_principal(u)
                .map_err(|e| Error::Config(format!("--super-users: {e}")))?;
        }
        if !(100..=3_600_000).contains(&self.tls_reload_interval_ms) {
            return Err(Error::Config(format!(
                "tls_reload_interval_ms must be in [100, 3600000] (got {})",
                self.tls_reload_interval_ms
            )));
        }
        Ok(crate::security::SecuritySettings {
            authorization: self.authorization,
            super_users: self.super_users.clone(),
        })
    }
}
