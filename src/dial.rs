//! How connections are opened: between nodes (Raft, controller calls,
//! replica fetches, forwarding) and from clients to brokers.
//!
//! Brokers are named (`sluice-3:9500`), and names can stop resolving for a
//! while just when it matters: a container runtime's DNS was seen hanging
//! every lookup for up to 40 s after a container died or restarted, so the
//! controller could not reach the node that had just registered with it,
//! and a client could not reach the brokers that were still up. So a name
//! lookup gets [`LOOKUP_TIMEOUT`], and when it fails or hangs the dialer
//! tries what it still knows: the address the peer's own calls last came
//! from ([`learn`], for nodes), then the addresses the name last resolved
//! to.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a name lookup may take before learned addresses are dialed.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a connection to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings on every internal connection: a peer whose host vanished sends no
/// reset, and without them calls would wait for the kernel's timeouts.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// Host name → the address a peer of that name last called from.
fn learned() -> &'static Mutex<HashMap<String, IpAddr>> {
    static LEARNED: OnceLock<Mutex<HashMap<String, IpAddr>>> = OnceLock::new();
    LEARNED.get_or_init(Default::default)
}

/// Host name → what it last resolved to.
fn resolved() -> &'static Mutex<HashMap<String, Vec<IpAddr>>> {
    static RESOLVED: OnceLock<Mutex<HashMap<String, Vec<IpAddr>>>> = OnceLock::new();
    RESOLVED.get_or_init(Default::default)
}

/// Records that the peer reached at `address` (`host:port`, as configured)
/// just called from `from`.
pub fn learn(address: &str, from: IpAddr) {
    let Some(host) = host_of(address) else {
        return;
    };
    if host.parse::<IpAddr>().is_ok() {
        // An address already: nothing to look up.
        return;
    }
    let mut l = learned().lock();
    if l.get(host) != Some(&from) {
        l.insert(host.to_string(), from);
    }
}

/// The host part of `host:port`.
fn host_of(address: &str) -> Option<&str> {
    let (host, _) = address.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A lazily connected channel to a peer's internal listener at `address`
/// (`host:port`), with HTTP/2 pings and the dialing above, over mutual TLS
/// when `tls` is given.
pub fn channel(address: &str, tls: Option<&InternalTls>) -> Result<Channel, String> {
    Ok(endpoint(address, tls)?.connect_with_connector_lazy(Dialer))
}

/// The endpoint [`channel`] connects; callers may tune it further (window
/// sizes) and connect it with [`Dialer`].
pub fn endpoint(address: &str, tls: Option<&InternalTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let e = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| format!("bad address {address}: {e}"))?
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .keep_alive_while_idle(true)
        .max_frame_size(crate::api::grpc::HTTP2_MAX_FRAME);
    match tls {
        None => Ok(e),
        Some(t) => e
            .tls_config(t.current())
            .map_err(|e| format!("internal TLS settings: {e}")),
    }
}

/// This node's side of mutual TLS between brokers: its certificate and
/// key, and the CA that signs every broker's. Rebuilt when the files
/// change; new connections use the current files.
pub struct InternalTls {
    files: crate::security::tls::TlsFiles,
    /// Swapped whole on reload.
    current: parking_lot::RwLock<tonic::transport::ClientTlsConfig>,
    /// The files' stamps when `current` was built (the reload task only).
    stamps: Mutex<Vec<crate::security::tls::Stamp>>,
}

impl std::fmt::Debug for InternalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl InternalTls {
    fn build(
        files: &crate::security::tls::TlsFiles,
    ) -> Result<tonic::transport::ClientTlsConfig, crate::security::tls::TlsError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| crate::security::tls::TlsError::File {
                path: p.to_path_buf(),
                why: e.to_string(),
            })
        };
        // Parsed here too, so a bad file fails at start, not at a dial.
        crate::security::tls::load_certs(&files.cert)?;
        crate::security::tls::load_key(&files.key)?;
        let mut c = ClientTlsConfig::new()
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
        if let Some(ca) = &files.ca {
            crate::security::tls::load_roots(ca)?;
            c = c.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        Ok(c)
    }

    /// Loads the files (blocking).
    pub fn load(
        files: crate::security::tls::TlsFiles,
    ) -> Result<std::sync::Arc<Self>, crate::security::tls::TlsError> {
        let stamps = crate::security::tls::stamps_of(&files);
        let current = Self::build(&files)?;
        Ok(std::sync::Arc::new(Self {
            files,
            current: parking_lot::RwLock::new(current),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration new connections use.
    pub fn current(&self) -> tonic::transport::ClientTlsConfig {
        self.current.read().clone()
    }
}

impl crate::security::tls::Reload for InternalTls {
    fn reload_if_changed(&self) -> Result<bool, crate::security::tls::TlsError> {
        let now = crate::security::tls::stamps_of(&self.files);
        let mut stamps = self.stamps.lock();
        if *stamps == now {
            return Ok(false);
        }
        *self.current.write() = Self::build(&self.files)?;
        *stamps = now;
        Ok(true)
    }

    fn files(&self) -> &crate::security::tls::TlsFiles {
        &self.files
    }
}

/// Connects to a URI's host: the addresses its name resolves to, then the
/// learned one; if the name does not resolve within [`LOOKUP_TIMEOUT`],
/// the learned address and then the addresses it last resolved to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dialer;

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::other(format!("no host in {uri}")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            dial(&host, port).await.map(TokioIo::new)
        })
    }
}

async fn dial(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut candidates: Vec<SocketAddr> = Vec::new();
    if let Ok(ip) = host.parse::<IpAddr>() {
        candidates.push(SocketAddr::new(ip, port));
    } else {
        let hint = learned().lock().get(host).copied();
        let looked_up =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port))).await;
        let failure = match looked_up {
            Ok(Ok(addrs)) => {
                candidates.extend(addrs);
                let ips = candidates.iter().map(|a| a.ip()).collect();
                resolved().lock().insert(host.to_string(), ips);
                None
            }
            Ok(Err(e)) => Some(e),
            Err(_) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("looking up {host} took over {LOOKUP_TIMEOUT:?}"),
            )),
        };
        let before = match failure {
            Some(_) => resolved().lock().get(host).cloned().unwrap_or_default(),
            None => Vec::new(),
        };
        for ip in hint.into_iter().chain(before) {
            let a = SocketAddr::new(ip, port);
            if !candidates.contains(&a) {
                candidates.push(a);
            }
        }
        if let (true, Some(e)) = (candidates.is_empty(), failure) {
            return Err(e);
        }
    }
    let mut last = io::Error::other(format!("{host} resolved to no address"));
    for addr in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                // Small messages (a Raft heartbeat, a follower's fetch)
                // must not wait for Nagle's algorithm.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} took over {CONNECT_TIMEOUT:?}"),
                )
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that does not resolve is still dialed at the address its
    /// peer last called from.
    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_dialed_where_its_peer_called_from() {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let name = "sluice-dial-test.invalid";
        assert!(dial(name, port).await.is_err(), "the name does not resolve");
        learn(&format!("{name}:9500"), "127.0.0.2".parse().expect("ip"));
        let s = dial(name, port).await.expect("dialed the learned address");
        assert_eq!(s.peer_addr().expect("peer").ip().to_string(), "127.0.0.2");
    }
}
