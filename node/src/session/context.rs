//! What every session of a node shares: configuration, the hub, metrics, the drain signal and
//! the connection count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::stomp;

pub struct Context {
    config: Arc<Config>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    draining: watch::Receiver<bool>,
    /// Distinguishes this node's message ids from other nodes'.
    node_tag: String,
    sessions: AtomicU64,
    connections: Arc<AtomicUsize>,
}

/// A connection's place within `max-connections`; released when dropped.
#[derive(Debug)]
pub struct Permit {
    connections: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        draining: watch::Receiver<bool>,
    ) -> Context {
        Context {
            config,
            hub,
            metrics,
            draining,
            node_tag: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
            sessions: AtomicU64::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Becomes true when the node starts draining.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.clone()
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A name for a new session, unique on this node and unlikely to repeat across nodes.
    pub fn next_session_tag(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}{:x}", self.node_tag, n)
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Takes a place for a new connection, or None when `max-connections` are open.
    pub fn admit(&self, _peer: SocketAddr) -> Option<Permit> {
        let max = self.config.limits.max_connections;
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok();
        admitted.then(|| Permit { connections: self.connections.clone() })
    }

    /// The codec's limits from the configuration.
    pub fn codec_limits(&self) -> stomp::Limits {
        let l = &self.config.limits;
        stomp::Limits {
            max_frame_bytes: l.max_frame_size,
            max_body_bytes: l.max_body_size,
            max_headers: l.max_headers,
            max_header_line: l.max_header_length,
        }
    }
}
