//! Server settings with embedded defaults.

use std::{net::SocketAddr, path::PathBuf};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9400";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";

/// Settings of one server process.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where partition logs live.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9400))),
        }
    }
}
