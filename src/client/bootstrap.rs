//! The brokers a client was given (`http://a:9400,http://b:9400,...`):
//! one is in use at a time for everything that is not routed to a
//! partition's leader (metadata, admin, groups, queues), and a broker
//! that stops answering is replaced by the next one in the list. Any
//! broker of a cluster serves these calls (it forwards or relays them),
//! so switching is safe at any moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::transport::Endpoint;

use super::connect::{Conn, Prepared};

use super::{source_chain, ClientError};
use crate::api::grpc::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW};
use crate::dial::Dialer;

/// A broker is given up on at most this often, so a burst of failures
/// from one outage moves on once, not once per failed call.
const MIN_SWITCH_INTERVAL: Duration = Duration::from_millis(500);

/// The bootstrap brokers and the one in use.
pub(crate) struct Bootstrap {
    urls: Vec<String>,
    /// Lazily connected, one per URL; a channel reconnects by itself.
    channels: Vec<Conn>,
    current: AtomicUsize,
    /// When the broker in use was last switched. Held only to read or
    /// set the instant.
    switched: Mutex<Instant>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("urls", &self.urls)
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish()
    }
}

/// The URLs of a comma-separated broker list.
pub(crate) fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// HTTP/2 pings on every client connection: a broker whose host vanished
/// (a container stopped, a machine lost) sends no reset, and without pings
/// calls on its connection would wait for the kernel's TCP timeouts
/// (minutes). With them a dead connection fails its calls within
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// An endpoint with the client's connection settings.
pub(crate) fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    Ok(Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::Address(url.into(), e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .max_frame_size(crate::api::grpc::HTTP2_MAX_FRAME))
}

impl Bootstrap {
    /// Connects to the first broker of `list` that answers; the others
    /// connect when first needed.
    pub async fn connect(list: &str, prepared: &Prepared) -> Result<Self, ClientError> {
        let urls: Vec<String> = split(list).iter().map(|u| prepared.url(u)).collect();
        if urls.is_empty() {
            return Err(ClientError::Address(
                list.into(),
                "no broker address given".into(),
            ));
        }
        let endpoints = urls
            .iter()
            .map(|u| prepared.endpoint(endpoint(u)?))
            .collect::<Result<Vec<_>, _>>()?;
        let mut errors = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            match e.connect_with_connector(Dialer).await {
                Ok(first) => {
                    let channels = endpoints
                        .iter()
                        .enumerate()
                        .map(|(j, e)| {
                            prepared.conn(if j == i {
                                first.clone()
                            } else {
                                e.connect_with_connector_lazy(Dialer)
                            })
                        })
                        .collect();
                    return Ok(Self {
                        urls,
                        channels,
                        current: AtomicUsize::new(i),
                        switched: Mutex::new(Instant::now()),
                    });
                }
                Err(err) => errors.push(format!("{}: {}", urls[i], source_chain(&err))),
            }
        }
        Err(ClientError::Connect(list.into(), errors.join("; ")))
    }

    /// One channel (a client built over an existing connection).
    pub fn single(channel: Conn) -> Self {
        Self {
            urls: vec![String::new()],
            channels: vec![channel],
            current: AtomicUsize::new(0),
            switched: Mutex::new(Instant::now()),
        }
    }

    /// The channel to the broker in use.
    pub fn channel(&self) -> Conn {
        self.channels[self.current.load(Ordering::Acquire) % self.channels.len()].clone()
    }

    /// A call to the broker in use failed in a way another broker may
    /// not (`s`): switch to the next one, unless a switch just happened.
    pub fn failed(&self, s: &tonic::Status) {
        if self.channels.len() < 2 || !switch_worthy(s) {
            return;
        }
        let mut last = self.switched.lock();
        if last.elapsed() < MIN_SWITCH_INTERVAL {
            return;
        }
        *last = Instant::now();
        let next = (self.current.load(Ordering::Acquire) + 1) % self.channels.len();
        self.current.store(next, Ordering::Release);
        tracing::debug!(broker = %self.urls[next], error = %s.message(), "switching bootstrap broker");
    }
}

/// Whether a failure says the broker itself is unreachable or going away
/// (rather than refusing the request): unreachable or stopping
/// (UNAVAILABLE without a leader hint, which would name a partition's
/// leader instead), a connection that broke mid-call, or no answer in
/// time.
pub(crate) fn switch_worthy(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => !s
            .metadata()
            .contains_key(crate::api::grpc::cluster::LEADER_HEADER),
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => true,
        // A connection closed under the call (a broker stopping): tonic
        // reports the HTTP/2 error as INTERNAL. A status the broker sent
        // has no local source error; this one does.
        tonic::Code::Internal => std::error::Error::source(s).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_list_splits_on_commas() {
        assert_eq!(
            split("http://a:1, http://b:2,,"),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
    }

    #[tokio::test]
    async fn a_broker_is_given_up_on_only_for_failures_of_its_own() {
        let lazy = |u: &str| Conn::plain(endpoint(u).expect("endpoint").connect_lazy());
        let b = Bootstrap {
            urls: vec!["http://a:1".into(), "http://b:2".into()],
            channels: vec![lazy("http://a:1"), lazy("http://b:2")],
            current: AtomicUsize::new(1),
            switched: Mutex::new(Instant::now() - MIN_SWITCH_INTERVAL),
        };
        let at = |b: &Bootstrap| b.current.load(Ordering::Acquire);
        // Refusals of the request, and NOT_LEADER, say nothing of the
        // broker.
        b.failed(&tonic::Status::invalid_argument("bad"));
        let mut not_leader = tonic::Status::unavailable("not the leader");
        not_leader.metadata_mut().insert(
            crate::api::grpc::cluster::LEADER_HEADER,
            "2@b:2".parse().expect("ascii"),
        );
        b.failed(&not_leader);
        // An INTERNAL error the broker answered with is a refusal too.
        b.failed(&tonic::Status::internal("a server-side error"));
        assert_eq!(at(&b), 1);
        // The same code made here from a connection that broke under the
        // call (a broker stopping) is the broker's failure.
        let mut broken = tonic::Status::internal("h2 protocol error: http2 error");
        broken.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection closed",
        )));
        assert!(switch_worthy(&broken));
        // Unreachable: the next one, once per interval.
        b.failed(&tonic::Status::unavailable("connection refused"));
        assert_eq!(at(&b), 0);
        b.failed(&tonic::Status::unavailable("connection refused"));
        assert_eq!(at(&b), 0);
    }
}
