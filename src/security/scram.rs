//! Salted passwords as SCRAM (RFC 5802, RFC 7677) keeps them: the server
//! stores a salt, an iteration count, `StoredKey` and `ServerKey`, never the
//! password. The same credential checks a SASL/SCRAM exchange and a
//! SASL/PLAIN password (sent over TLS).

use std::fmt;
use std::num::NonZeroU32;

use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Iterations for new credentials (Kafka's minimum is 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Fewer than this is refused (Kafka's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// More than this is refused (bounds the work a PLAIN login costs).
pub const MAX_ITERATIONS: u32 = 16384;

/// A SCRAM hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mechanism {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl Mechanism {
    /// The SASL mechanism name.
    pub fn sasl_name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// From a SASL mechanism name.
    pub fn from_sasl_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            "SCRAM-SHA-512" => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::Sha256 => hmac::HMAC_SHA256,
            Mechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::Sha256 => &digest::SHA256,
            Mechanism::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        match self {
            Mechanism::Sha256 => 32,
            Mechanism::Sha512 => 64,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sasl_name())
    }
}

/// What the server keeps of a password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The hash.
    pub mechanism: Mechanism,
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac_of(m: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(m.hmac(), key), data)
        .as_ref()
        .to_vec()
}

fn salted_password(m: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; m.len()];
    let n = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    pbkdf2::derive(m.pbkdf2(), n, salt, password, &mut out);
    out
}

/// Equal in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes from the system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system generator fails only if the OS has no entropy source, in
    // which case no key material could be made at all.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        tracing::error!("the system random generator failed");
    }
    b
}

impl ScramCredential {
    /// A new credential for `password` with a random salt.
    pub fn new(m: Mechanism, password: &str, iterations: u32) -> Self {
        Self::with_salt(m, password, random_bytes::<32>().to_vec(), iterations)
    }

    /// A credential with the given salt (tests use fixed ones).
    pub fn with_salt(m: Mechanism, password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(m, password.as_bytes(), &salt, iterations);
        let client_key = hmac_of(m, &salted, b"Client Key");
        let stored_key = digest::digest(m.digest(), &client_key).as_ref().to_vec();
        let server_key = hmac_of(m, &salted, b"Server Key");
        Self {
            mechanism: m,
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Whether `password` is this credential's (a PLAIN login): costs
    /// `iterations` rounds of PBKDF2, so run it off the async runtime.
    pub fn verify_password(&self, password: &str) -> bool {
        let other = Self::with_salt(self.mechanism, password, self.salt.clone(), self.iterations);
        constant_time_eq(&other.stored_key, &self.stored_key)
    }
}

/// Why a SCRAM exchange failed. The message goes to the client, so it
/// never says whether the user exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not SCRAM.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Wrong user or password.
    #[error("authentication failed: invalid user name or password")]
    Failed,
}

/// SASL-escaped name (`=2C` is ',' and `=3D` is '=').
fn unescape_name(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

fn attribute<'a>(part: Option<&'a str>, key: &str) -> Result<&'a str, ScramError> {
    part.and_then(|p| p.strip_prefix(key))
        .and_then(|p| p.strip_prefix('='))
        .ok_or(ScramError::Malformed("attribute missing or out of order"))
}

/// The server's side of one SCRAM exchange: `client_first`, then
/// `client_final`.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: Mechanism,
    state: ScramState,
}

#[derive(Debug)]
enum ScramState {
    Start,
    SentFirst {
        user: String,
        credential: Option<ScramCredential>,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

impl ScramServer {
    /// A new exchange.
    pub fn new(mechanism: Mechanism) -> Self {
        Self {
            mechanism,
            state: ScramState::Start,
        }
    }

    /// Whether the client's first message has been taken.
    pub fn started(&self) -> bool {
        !matches!(self.state, ScramState::Start)
    }

    /// Takes the client's first message; `lookup` finds the user's
    /// credential for this mechanism. Returns the server's first message
    /// (an unknown user gets a made-up salt, and fails at the end).
    pub fn client_first(
        &mut self,
        msg: &[u8],
        lookup: impl FnOnce(&str, Mechanism) -> Option<ScramCredential>,
    ) -> Result<String, ScramError> {
        if !matches!(self.state, ScramState::Start) {
            return Err(ScramError::Malformed("unexpected client-first message"));
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: "n,," or "y,," (no channel binding) with an optional
        // authzid "a=..." between the commas.
        let mut parts = msg.splitn(3, ',');
        let cb = parts.next().unwrap_or("");
        if cb != "n" && cb != "y" {
            return Err(ScramError::Malformed("channel binding is not supported"));
        }
        let _authzid = parts.next();
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("no client-first-message-bare"))?;
        let mut attrs = bare.split(',');
        let user = unescape_name(attribute(attrs.next(), "n")?)?;
        let client_nonce = attribute(attrs.next(), "r")?;
        if client_nonce.is_empty() {
            return Err(ScramError::Malformed("empty nonce"));
        }
        let credential = lookup(&user, self.mechanism).filter(|c| c.mechanism == self.mechanism);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (random_bytes::<32>().to_vec(), DEFAULT_ITERATIONS),
        };
        let nonce = format!(
            "{client_nonce}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<24>())
        );
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        self.state = ScramState::SentFirst {
            user,
            credential,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Takes the client's final message: on a valid proof returns the
    /// server's final message and the authenticated user name.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<(String, String), ScramError> {
        let ScramState::SentFirst {
            user,
            credential,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, ScramState::Done)
        else {
            return Err(ScramError::Malformed("unexpected client-final message"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let _binding = attribute(attrs.next(), "c")?;
        let got_nonce = attribute(attrs.next(), "r")?;
        // RFC 5802 wants the nonce back as sent; librdkafka sends its own
        // nonce again in front of it, and Kafka accepts any nonce that
        // ends with the server's (the proof covers the whole message).
        if !got_nonce.ends_with(&nonce) {
            return Err(ScramError::Failed);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let Some(c) = credential else {
            return Err(ScramError::Failed);
        };
        let m = self.mechanism;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_of(m, &c.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::Failed);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let stored = digest::digest(m.digest(), &client_key);
        if !constant_time_eq(stored.as_ref(), &c.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac_of(m, &c.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), user))
    }
}

/// The client's side of SCRAM, for tests and the Rust client.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    user: String,
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange.
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> Self {
        let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<18>());
        let escaped = user.replace('=', "=3D").replace(',', "=2C");
        Self {
            mechanism,
            user: user.to_string(),
            password: password.to_string(),
            client_first_bare: format!("n={escaped},r={nonce}"),
            nonce,
            server_signature: None,
        }
    }

    /// The client's first message.
    pub fn first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client's final message for the server's first.
    pub fn finish(&mut self, server_first: &str) -> Result<String, ScramError> {
        let mut attrs = server_first.split(',');
        let nonce = attribute(attrs.next(), "r")?;
        let salt = B64
            .decode(attribute(attrs.next(), "s")?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = attribute(attrs.next(), "i")?
            .parse()
            .map_err(|_| ScramError::Malformed("iterations"))?;
        if !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let m = self.mechanism;
        let salted = salted_password(m, self.password.as_bytes(), &salt, iterations);
        let client_key = hmac_of(m, &salted, b"Client Key");
        let stored_key = digest::digest(m.digest(), &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac_of(m, stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_of(m, &salted, b"Server Key");
        self.server_signature = Some(hmac_of(m, &server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message (mutual authentication).
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let v = server_final
            .strip_prefix("v=")
            .ok_or(ScramError::Failed)
            .and_then(|v| B64.decode(v).map_err(|_| ScramError::Failed))?;
        match &self.server_signature {
            Some(s) if constant_time_eq(s, &v) => Ok(()),
            _ => Err(ScramError::Failed),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredential::with_salt(Mechanism::Sha256, "pencil", salt, 4096);
        let mut server = ScramServer::new(Mechanism::Sha256);
        let client_first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = server
            .client_first(client_first.as_bytes(), |u, _| {
                (u == "user").then(|| c.clone())
            })
            .unwrap();
        assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        // Replay the RFC's exchange with its server nonce.
        let mut server = ScramServer {
            mechanism: Mechanism::Sha256,
            state: ScramState::SentFirst {
                user: "user".into(),
                credential: Some(c),
                client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
                server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
                nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            },
        };
        let (server_final, user) = server
            .client_final(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(user, "user");
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn client_and_server_agree_and_a_wrong_password_fails() {
        for m in [Mechanism::Sha256, Mechanism::Sha512] {
            let c = ScramCredential::new(m, "s3cret", MIN_ITERATIONS);
            assert!(c.verify_password("s3cret"));
            assert!(!c.verify_password("s3cret "));
            for (password, ok) in [("s3cret", true), ("wrong", false)] {
                let mut client = ScramClient::new(m, "a,b=c", password);
                let mut server = ScramServer::new(m);
                let first = server
                    .client_first(client.first().as_bytes(), |u, _| {
                        assert_eq!(u, "a,b=c");
                        Some(c.clone())
                    })
                    .unwrap();
                let fin = client.finish(&first).unwrap();
                match server.client_final(fin.as_bytes()) {
                    Ok((v, user)) => {
                        assert!(ok);
                        assert_eq!(user, "a,b=c");
                        client.verify(&v).unwrap();
                    }
                    Err(e) => {
                        assert!(!ok);
                        assert_eq!(e, ScramError::Failed);
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_users_and_garbage_fail_without_panicking() {
        let mut server = ScramServer::new(Mechanism::Sha256);
        let mut client = ScramClient::new(Mechanism::Sha256, "ghost", "x");
        let first = server
            .client_first(client.first().as_bytes(), |_, _| None)
            .unwrap();
        let fin = client.finish(&first).unwrap();
        assert_eq!(
            server.client_final(fin.as_bytes()).unwrap_err(),
            ScramError::Failed
        );
        for junk in [&b""[..], b"n", b"p,,n=a,r=b", b"n,,n=a=ZZ,r=x", b"\xff\xfe"] {
            let mut s = ScramServer::new(Mechanism::Sha256);
            assert!(s.client_first(junk, |_, _| None).is_err());
        }
        let mut s = ScramServer::new(Mechanism::Sha256);
        assert!(s.client_final(b"c=biws,r=x,p=AAAA").is_err());
    }
}
