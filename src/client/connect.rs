//! How a client reaches brokers: TLS (the CA that signs the brokers'
//! certificates, and optionally a client certificate for mutual TLS) and a
//! bearer token sent with every call.

use std::path::PathBuf;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::ClientError;

/// Connection options; the default is clear text without a token.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer TOKEN` with every call.
    pub token: Option<String>,
    /// CA certificate (PEM) that signs the brokers' certificates: turns TLS
    /// on (`http://` addresses are dialed with TLS too).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The name to verify in the brokers' certificates [default: the host
    /// of each address].
    pub tls_server_name: Option<String>,
    /// Sent as `sluice-client-id` (quotas may be set per client id).
    pub client_id: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_server_name", &self.tls_server_name)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// The prepared form of [`ConnectOptions`]: files read once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Prepared {
    token: Option<HeaderValue>,
    client_id: Option<HeaderValue>,
    tls: Option<ClientTlsConfig>,
}

impl ConnectOptions {
    /// Reads the files and checks the token.
    pub(crate) fn prepare(&self) -> Result<Prepared, ClientError> {
        let token = match &self.token {
            None => None,
            Some(t) => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {}", t.trim())).map_err(|_| {
                        ClientError::Address(
                            "token".into(),
                            "the token holds characters a header may not".into(),
                        )
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map_err(|e| ClientError::Address(p.display().to_string(), e.to_string()))
        };
        let tls = match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => None,
            (ca, cert, key) => {
                let mut c = ClientTlsConfig::new();
                if let Some(ca) = ca {
                    c = c.ca_certificate(Certificate::from_pem(read(ca)?));
                }
                match (cert, key) {
                    (Some(cert), Some(key)) => {
                        c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
                    }
                    (None, None) => {}
                    _ => {
                        return Err(ClientError::Address(
                            "tls".into(),
                            "a client certificate needs its key (--tls-cert with --tls-key)".into(),
                        ))
                    }
                }
                if let Some(name) = &self.tls_server_name {
                    c = c.domain_name(name.clone());
                }
                Some(c)
            }
        };
        let client_id = match &self.client_id {
            None => None,
            Some(c) => Some(HeaderValue::from_str(c).map_err(|_| {
                ClientError::Address(
                    "client id".into(),
                    "the client id holds characters a header may not".into(),
                )
            })?),
        };
        Ok(Prepared {
            token,
            client_id,
            tls,
        })
    }
}

impl Prepared {
    /// `url` with the scheme these options dial (`https` with TLS).
    pub(crate) fn url(&self, url: &str) -> String {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .unwrap_or(url);
        if self.tls.is_some() {
            format!("https://{rest}")
        } else {
            format!("http://{rest}")
        }
    }

    /// Applies the TLS settings to an endpoint.
    pub(crate) fn endpoint(&self, e: Endpoint) -> Result<Endpoint, ClientError> {
        match &self.tls {
            None => Ok(e),
            Some(tls) => e
                .tls_config(tls.clone())
                .map_err(|err| ClientError::Address("tls".into(), super::source_chain(&err))),
        }
    }

    /// A channel that sends the token.
    pub(crate) fn conn(&self, channel: Channel) -> Conn {
        Conn {
            inner: channel,
            token: self.token.clone(),
            client_id: self.client_id.clone(),
        }
    }
}

/// A channel to a broker that adds the bearer token to each call.
#[derive(Clone, Debug)]
pub struct Conn {
    inner: Channel,
    token: Option<HeaderValue>,
    client_id: Option<HeaderValue>,
}

impl Conn {
    /// A channel without a token.
    pub fn plain(channel: Channel) -> Self {
        Self {
            inner: channel,
            token: None,
            client_id: None,
        }
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Conn {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as tower_service::Service<http::Request<tonic::body::Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(t) = &self.token {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, t.clone());
        }
        if let Some(c) = &self.client_id {
            req.headers_mut()
                .insert(crate::api::grpc::auth::CLIENT_ID_HEADER, c.clone());
        }
        tower_service::Service::call(&mut self.inner, req)
    }
}
