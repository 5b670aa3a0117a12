//! Authentication on the Kafka listener: SASL (KIP-43 handshake v1 with
//! KIP-152 SaslAuthenticate frames) with PLAIN (over TLS only) and
//! SCRAM-SHA-256/512, checked against the credentials `sluice user create`
//! stores; or the principal of a verified TLS client certificate.
//!
//! With authorization on, a connection must authenticate before any
//! request other than ApiVersions, SaslHandshake and SaslAuthenticate; an
//! early request, or a failed authentication, closes the connection (as
//! Kafka does) after the error response.

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::ResponseError;

use super::{text, Kafka};
use crate::security::scram::{Mechanism, ScramError, ScramServer};
use crate::security::{Caller, Principal};

/// The mechanisms offered on a TLS connection (PLAIN sends the password).
const TLS_MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"];
/// The mechanisms offered in clear text.
const PLAIN_TEXT_MECHANISMS: &[&str] = &["SCRAM-SHA-256", "SCRAM-SHA-512"];

/// What a connection has chosen and proven.
#[derive(Debug)]
enum Sasl {
    /// No handshake yet.
    None,
    /// PLAIN chosen.
    Plain,
    /// SCRAM chosen, exchange under way.
    Scram(ScramServer),
}

/// One connection's authentication state.
#[derive(Debug)]
pub(crate) struct Session {
    /// Over TLS.
    pub tls: bool,
    /// Who it authenticated as (SASL or a client certificate).
    pub principal: Option<Principal>,
    sasl: Sasl,
    /// Close after sending the current response.
    pub close: bool,
    /// Over a quota: read nothing more for this long after the response.
    pub throttle: std::time::Duration,
}

impl Session {
    /// A new connection; `peer` is its verified certificate's principal.
    pub fn new(tls: bool, peer: Option<Principal>) -> Self {
        Self {
            tls,
            principal: peer,
            sasl: Sasl::None,
            close: false,
            throttle: std::time::Duration::ZERO,
        }
    }

    fn mechanisms(&self) -> &'static [&'static str] {
        if self.tls {
            TLS_MECHANISMS
        } else {
            PLAIN_TEXT_MECHANISMS
        }
    }
}

fn failed(message: impl Into<String>) -> SaslAuthenticateResponse {
    metrics::counter!("sluice_authentication_failures_total").increment(1);
    SaslAuthenticateResponse::default()
        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
        .with_error_message(Some(text(message)))
}

impl Kafka {
    /// The caller a request runs as, or why it may not run yet.
    pub(crate) fn caller_of(&self, session: &Session) -> Option<Caller> {
        match &session.principal {
            Some(p) => Some(Caller::checked(p.clone(), self.access.clone())),
            None if !self.access.enforcing() => {
                Some(Caller::checked(Principal::anonymous(), self.access.clone()))
            }
            None => None,
        }
    }

    pub(crate) fn sasl_handshake(
        &self,
        session: &mut Session,
        version: i16,
        r: SaslHandshakeRequest,
    ) -> SaslHandshakeResponse {
        let offered: Vec<_> = session.mechanisms().iter().map(|m| text(*m)).collect();
        let wanted: &str = &r.mechanism;
        let resp = SaslHandshakeResponse::default().with_mechanisms(offered);
        if version == 0 {
            // Unframed tokens would follow: only SaslAuthenticate is read.
            session.close = true;
            return resp.with_error_code(ResponseError::UnsupportedVersion.code());
        }
        if session.principal.is_some() && !matches!(session.sasl, Sasl::None) {
            session.close = true;
            return resp.with_error_code(ResponseError::IllegalSaslState.code());
        }
        if !session.mechanisms().contains(&wanted) {
            // PLAIN in clear text, or one not supported.
            session.close = true;
            return resp.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
        }
        session.sasl = match Mechanism::from_sasl_name(wanted) {
            Some(m) => Sasl::Scram(ScramServer::new(m)),
            None => Sasl::Plain,
        };
        resp
    }

    pub(crate) async fn sasl_authenticate(
        &self,
        session: &mut Session,
        r: SaslAuthenticateRequest,
    ) -> SaslAuthenticateResponse {
        let view = self.access.view();
        match &mut session.sasl {
            Sasl::None => {
                session.close = true;
                SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(text("SaslAuthenticate before SaslHandshake")))
            }
            Sasl::Plain => {
                session.close = true;
                let Some((user, password)) = parse_plain(&r.auth_bytes) else {
                    return failed("malformed PLAIN message");
                };
                let credential = view.any_credential(&user);
                // PBKDF2: off the runtime.
                let ok = tokio::task::spawn_blocking(move || {
                    credential.is_some_and(|c| c.verify_password(&password))
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return failed(ScramError::Failed.to_string());
                }
                session.close = false;
                session.principal = Some(Principal::user(&user));
                SaslAuthenticateResponse::default()
            }
            Sasl::Scram(server) if !server.started() => {
                match server.client_first(&r.auth_bytes, |u, m| view.credential(u, m)) {
                    Ok(server_first) => SaslAuthenticateResponse::default()
                        .with_auth_bytes(Bytes::from(server_first.into_bytes())),
                    Err(e) => {
                        session.close = true;
                        failed(e.to_string())
                    }
                }
            }
            Sasl::Scram(server) => match server.client_final(&r.auth_bytes) {
                Ok((server_final, user)) => {
                    session.principal = Some(Principal::user(&user));
                    SaslAuthenticateResponse::default()
                        .with_auth_bytes(Bytes::from(server_final.into_bytes()))
                }
                Err(e) => {
                    session.close = true;
                    failed(e.to_string())
                }
            },
        }
    }
}

/// `authzid NUL user NUL password` (RFC 4616); an authzid other than the
/// user is refused.
fn parse_plain(b: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(b).ok()?;
    let mut parts = s.split('\0');
    let authzid = parts.next()?;
    let user = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}
