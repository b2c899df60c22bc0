//! The node: what every listener, session and admin request of one broker process shares —
//! configuration, the hub, metrics, the drain signal, authentication and TLS, and the connection
//! counts (per node and per client address) with the admission they decide.
//!
//! It sits below the transports, the sessions and the admin API, which all hold an
//! `Arc<Node>`, and above the hub and the engine; it knows nothing of sockets or frames.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::apps::Apps;
use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::stomp;

pub struct Node {
    config: Arc<Config>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    drain: Drain,
    sessions: AtomicU64,
    connections: Arc<AtomicUsize>,
    /// Open connections by client address, kept only with `max-connections-per-ip` set.
    per_address: PerAddress,
    auth: Auth,
    apps: Apps,
    /// Replaced when SIGHUP reloads the certificate; each connection takes the current one.
    tls: RwLock<Option<TlsAcceptor>>,
}

/// Open connections by client address; locked only to count one in or out.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A connection's place within `max-connections` and `max-connections-per-ip`; released when
/// dropped.
#[derive(Debug)]
pub struct Permit {
    connections: Arc<AtomicUsize>,
    address: Option<(PerAddress, IpAddr)>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some((per_address, ip)) = &self.address {
            let mut counts = per_address.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

/// Why a connection was not admitted; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections (max-connections is {0})")]
    NodeFull(usize),
    #[error("too many connections from {0} (max-connections-per-ip is {1})")]
    AddressFull(IpAddr, usize),
}

impl Node {
    pub fn new(config: Arc<Config>, hub: Arc<Hub>, metrics: Arc<Metrics>, drain: Drain) -> Node {
        let apps = Apps::new(&config, metrics.clone());
        Node {
            config,
            hub,
            metrics,
            drain,
            sessions: AtomicU64::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            per_address: Arc::new(Mutex::new(HashMap::new())),
            auth: Auth::off(),
            apps,
            tls: RwLock::new(None),
        }
    }

    /// The same node with authentication and TLS (a node from [`Node::new`] has neither:
    /// every client is trusted, connections are plain text).
    pub fn with_security(self, auth: Auth, tls: Option<TlsAcceptor>) -> Node {
        Node { auth, tls: RwLock::new(tls), ..self }
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// The TLS acceptor of the client listeners, when TLS is configured: the one a new
    /// connection uses (a reload does not touch connections already made).
    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the TLS acceptor (a certificate reloaded on SIGHUP) for connections from now on.
    pub fn set_tls(&self, acceptor: TlsAcceptor) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Some(acceptor);
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

    /// The node's drain signal, for a task that waits for it.
    pub fn drain(&self) -> Drain {
        self.drain.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.started()
    }

    /// An id for a new session, unique on this node and unlikely to repeat across nodes: the
    /// engine's session tag, by which a message for the session finds this node, then a count.
    pub fn next_session_id(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}{:x}", crate::engine::Engine::session_tag(self.hub.engine()), n)
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Takes a place for a new connection, or says which limit is reached: `max-connections`
    /// on this node or `max-connections-per-ip` for the client's address.
    pub fn admit(&self, peer: SocketAddr) -> Result<Permit, Refusal> {
        let max = self.config.limits.max_connections;
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (max == 0 || n < max).then_some(n + 1))
            .is_ok();
        if !admitted {
            return Err(Refusal::NodeFull(max));
        }
        // From here, dropping the permit gives the node-wide place back.
        let mut permit = Permit { connections: self.connections.clone(), address: None };
        let per_ip = self.config.limits.max_connections_per_ip;
        if per_ip > 0 {
            let ip = canonical(peer.ip());
            let mut counts = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
            let n = counts.entry(ip).or_insert(0);
            if *n >= per_ip {
                drop(counts);
                return Err(Refusal::AddressFull(ip, per_ip));
            }
            *n += 1;
            drop(counts);
            permit.address = Some((self.per_address.clone(), ip));
        }
        Ok(permit)
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

/// An IPv4 client seen through an IPv6 socket counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The node's drain signal: turns on once, when the node starts draining (SIGTERM), and stays on.
/// Listeners stop accepting, sessions schedule their close, `/readyz` answers 503.
#[derive(Clone, Debug)]
pub struct Drain(watch::Receiver<bool>);

/// Starts the drain of every [`Drain`] made with it; dropping it without calling
/// [`start`](DrainSwitch::start) means the node never drains.
#[derive(Debug)]
pub struct DrainSwitch(watch::Sender<bool>);

impl Drain {
    /// A drain signal and the switch that turns it on.
    pub fn new() -> (DrainSwitch, Drain) {
        let (tx, rx) = watch::channel(false);
        (DrainSwitch(tx), Drain(rx))
    }

    /// Whether the drain has started.
    pub fn started(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started (at once if it has), or never if the switch was
    /// dropped without starting it. Cancellation-safe.
    pub async fn wait(&mut self) {
        while !self.started() {
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl DrainSwitch {
    pub fn start(&self) {
        let _ = self.0.send(true);
    }
}
