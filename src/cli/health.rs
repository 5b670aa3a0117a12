//! `sluice health`: asks a server's metrics listener whether it is ready
//! (`/readyz`) or alive (`/healthz`), for container health checks in
//! images that carry no HTTP client. Exit status 0 means HTTP 200.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::Args;

/// Settings of `sluice health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The server's metrics address; a wildcard host means this machine
    /// [default: SLUICE_METRICS_LISTEN, else 127.0.0.1:9401].
    #[arg(long, env = "SLUICE_METRICS_LISTEN")]
    pub metrics: Option<String>,
    /// Ask whether the process is alive (`/healthz`) rather than ready to
    /// serve (`/readyz`: in a cluster, metadata caught up).
    #[arg(long)]
    pub live: bool,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// The address to dial for a listen address (`0.0.0.0:p` → `127.0.0.1:p`).
fn dial_address(listen: &str) -> Result<SocketAddr, String> {
    let addr = listen
        .to_socket_addrs()
        .map_err(|e| format!("metrics address '{listen}': {e}"))?
        .next()
        .ok_or_else(|| format!("metrics address '{listen}' resolves to nothing"))?;
    Ok(match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        a => a,
    })
}

/// Checks the server; `Err` says why it is not healthy.
pub fn health(a: &HealthArgs) -> Result<(), String> {
    let listen = a.metrics.as_deref().unwrap_or("127.0.0.1:9401");
    if listen == "off" {
        return Err("the metrics listener is off: nothing to ask".into());
    }
    let addr = dial_address(listen)?;
    let path = if a.live { "/healthz" } else { "/readyz" };
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("{addr}: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut reply = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut reply)
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    let reply = String::from_utf8_lossy(&reply);
    let status = reply.lines().next().unwrap_or_default();
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("{addr}{path}: {status} {body}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_dialed_on_loopback() {
        assert_eq!(
            dial_address("0.0.0.0:9401").expect("addr"),
            "127.0.0.1:9401".parse().expect("addr")
        );
        assert_eq!(
            dial_address("127.0.0.2:1").expect("addr"),
            "127.0.0.2:1".parse().expect("addr")
        );
    }
}
