//! A node's TLS settings (loaded on the blocking pool, reloaded when their
//! files change), the bootstrap tokens left in its data directory, and the
//! warning an exposed, unsecured listener logs at start.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use super::Listeners;
use crate::api::grpc::security::SecurityService;
use crate::config::ServerConfig;
use crate::error::Error;
use crate::security::tls::{ClientAuth, Reload, ReloadingConfig};

/// TLS of a node's listeners (each `None`: clear text).
pub(super) struct NodeTls {
    /// The gRPC and Kafka client listeners.
    pub(super) client: Option<Arc<ReloadingConfig>>,
    /// The same files with Kafka's ALPN (none).
    pub(super) kafka: Option<Arc<ReloadingConfig>>,
    /// The internal listener (mutual).
    pub(super) internal: Option<Arc<ReloadingConfig>>,
    /// This node's calls to the others' internal listeners (mutual).
    pub(super) internal_client: Option<Arc<crate::dial::InternalTls>>,
    /// How often the files are checked.
    pub(super) reload_every: Duration,
}

/// Loads the TLS files named in the settings (on the blocking pool).
pub(super) async fn load_tls(config: &ServerConfig) -> Result<NodeTls, Error> {
    let client = config.security.client_tls()?;
    let internal = config.security.internal_tls()?;
    let reload_every = Duration::from_millis(config.security.tls_reload_interval_ms);
    tokio::task::spawn_blocking(move || {
        let load = |files: Option<crate::security::tls::TlsFiles>, auth, alpn: &[&[u8]]| {
            files
                .map(|f| ReloadingConfig::load(f, auth, alpn))
                .transpose()
                .map_err(|e| Error::Config(format!("TLS: {e}")))
        };
        let internal_client = internal
            .clone()
            .map(crate::dial::InternalTls::load)
            .transpose()
            .map_err(|e| Error::Config(format!("internal TLS: {e}")))?;
        Ok(NodeTls {
            client: load(client.clone(), ClientAuth::Optional, &[b"h2"])?,
            kafka: load(client, ClientAuth::Optional, &[])?,
            internal: load(internal, ClientAuth::Required, &[b"h2"])?,
            internal_client,
            reload_every,
        })
    })
    .await
    .map_err(|e| Error::Config(format!("loading TLS files: {e}")))?
}

/// Checks each configuration's files every `every` and swaps in a new one
/// when they change (new connections use it; open ones keep theirs).
pub(super) async fn reload_tls(configs: Vec<Arc<dyn Reload>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for c in &configs {
            let c2 = c.clone();
            match tokio::task::spawn_blocking(move || c2.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    metrics::counter!("sluice_tls_reloads_total").increment(1);
                    info!(cert = %c.files().cert.display(), "TLS certificate files changed; reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "TLS certificate files changed but do not load; keeping the previous ones")
                }
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// How often the data directory is checked for bootstrap tokens.
const BOOTSTRAP_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Imports the tokens `sluice token issue --bootstrap` leaves in the data
/// directory: each is issued through the node's security state (the
/// quorum, in a cluster), then its file is removed.
pub(super) async fn import_bootstrap_tokens(
    data_dir: std::path::PathBuf,
    service: SecurityService,
) {
    use crate::security::store::{pending_bootstrap_tokens, remove_bootstrap_token};
    loop {
        let dir = data_dir.clone();
        let pending = tokio::task::spawn_blocking(move || pending_bootstrap_tokens(&dir))
            .await
            .unwrap_or_default();
        for (path, record) in pending {
            let (id, principal) = (record.id.clone(), record.principal.clone());
            let cmd = crate::security::SecurityCommand::IssueToken { record };
            match service.change(cmd).await {
                Ok(_) => {
                    info!(id, principal, "bootstrap token imported");
                    let fs = crate::storage::os_fs();
                    let p = path.clone();
                    match tokio::task::spawn_blocking(move || remove_bootstrap_token(&fs, &p)).await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not remove an imported bootstrap token file")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "removing a bootstrap token file failed")
                        }
                    }
                }
                Err(s) => {
                    tracing::warn!(id, error = %s.message(), file = %path.display(), "bootstrap token not imported yet")
                }
            }
        }
        tokio::time::sleep(BOOTSTRAP_CHECK_INTERVAL).await;
    }
}

/// Logs loudly when a listener on a non-loopback address runs without TLS
/// or without authorization.
pub(super) fn warn_if_exposed(
    config: &ServerConfig,
    listeners: &Listeners,
    client_tls: bool,
    internal_tls: bool,
) {
    let exposed = |l: &Option<&TcpListener>| {
        l.and_then(|l| l.local_addr().ok())
            .is_some_and(|a| !a.ip().is_loopback())
    };
    let client = exposed(&Some(&listeners.client)) || exposed(&listeners.kafka.as_ref());
    if client && !client_tls {
        tracing::warn!("SECURITY: a client listener is on a non-loopback address WITHOUT TLS: anyone on the network can read and forge traffic (set --tls-cert and --tls-key)");
    }
    if client && !config.security.authorization {
        tracing::warn!("SECURITY: a client listener is on a non-loopback address WITHOUT authorization: anyone who can connect may read, write and delete everything (set --authorization on and --super-users)");
    }
    if exposed(&listeners.internal.as_ref()) && !internal_tls {
        tracing::warn!("SECURITY: the internal listener is on a non-loopback address WITHOUT mutual TLS: anyone who can connect can act as a broker (set --internal-tls-cert, --internal-tls-key and --internal-tls-ca)");
    }
}
