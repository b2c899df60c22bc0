//! Stampede: a clustered STOMP 1.0/1.1/1.2 broker for browsers and services.
//!
//! Clients speak STOMP over WebSocket (`/ws`) or plain TCP. Each node keeps its own client
//! sessions; with no Redis configured it runs the embedded in-memory engine.
//!
//! # Layout
//! Dependencies flow one way: [`transport`] (WebSocket and TCP listeners, plain or TLS) feeds
//! [`session`] (one client's state machine; [`session::link`] is the seam between the two), which
//! uses [`hub`] (local subscriptions and fan-out), which uses [`engine`] (the trait and its back
//! ends). [`stomp`] is the frame codec, pure. [`node`] is what all of a process shares (config,
//! hub, metrics, admission, the drain signal); [`http`] serves health, metrics and the admin API;
//! [`config`], [`auth`] (who a client is and what it may do), [`destination`], [`metrics`] and
//! [`logs`] (the subscriber: text or JSON) stand beside.
//! `docs/architecture.md` draws the whole graph, the lock order and the channels.
//!
//! The binary is thin: it loads [`config::Config`], checks the files it names with
//! [`Security::load`], starts tracing ([`logs::init`]), binds [`Listeners`] and calls [`run`].
//! Tests bind port 0 and call [`run`] the same way. [`run`] also answers SIGHUP: it reads the
//! users file, the JWT keys and the TLS certificate again ([`reload`]).

pub mod apps;
pub mod auth;
pub mod config;
pub mod destination;
pub mod engine;
pub mod http;
pub mod hub;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod session;
pub mod stomp;
pub mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{settings, Config};
use crate::engine::{memory::MemoryEngine, redis::RedisEngine, AnyEngine};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node::{Drain, Node};

/// Errors that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} ({setting}): {source}")]
    Bind { setting: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the cluster engine (redis-url): {0}")]
    ClusterEngine(#[source] crate::engine::EngineError),
    #[error("{0}")]
    Auth(#[from] auth::LoadError),
    #[error("{0}")]
    Tls(#[from] transport::tls::TlsError),
}

/// The node's authentication and TLS, loaded from the files the configuration names.
pub struct Security {
    pub auth: auth::Auth,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Security {
    /// Reads and checks the users file, the JWT keys and the TLS certificate and key.
    pub fn load(config: &Config) -> Result<Security, Error> {
        let auth = auth::Auth::load(config)?;
        let tls = config.tls.as_ref().map(transport::tls::acceptor).transpose()?;
        Ok(Security { auth, tls })
    }

    /// Logs what an operator should know about the node's exposure.
    fn warn(&self, config: &Config) {
        if !self.auth.enabled() {
            tracing::warn!(
                "authentication is off: any client may connect and claim any login; set users-file \
                 or jwt-secret, jwt-public-key or jwt-jwks to require it (see docs/security.md)"
            );
        } else if !self.auth.origin_check_enabled() {
            tracing::warn!("ws-origins is unset: web pages of any origin may open a WebSocket to this node");
        }
        let public_admin = config.admin_listen.is_some_and(|addr| !addr.ip().is_loopback());
        if public_admin && !self.auth.admin_token_set() {
            tracing::warn!("the admin API is open on a non-loopback address: set admin-token");
        }
        let apps = &config.apps;
        if !apps.prefixes.is_empty()
            && apps.backend_secret.is_none()
            && !self.auth.enabled()
            && apps.connect_hook.is_none()
        {
            tracing::warn!(
                prefixes = %apps.prefixes.join(","),
                "no STOMP worker can consume application destinations (the backend role comes \
                 from app-backend-secret, a users file, a JWT or the connect hook); messages there \
                 wait in their queues unless an app-http route takes them (see docs/applications.md)"
            );
        }
    }
}

/// Reads the users file, the JWT keys and the TLS certificate and key again, as SIGHUP asks: new
/// CONNECTs are checked against the new users and keys, new connections get the new
/// certificate; sessions already open keep theirs. Each part is replaced only if it loads;
/// one line says what was reloaded, or why a part was not (and that the old one stays).
/// Blocking (file reads and key parsing): call it off the runtime's workers.
pub fn reload(node: &Node) {
    let config = node.config();
    let auth = if config.auth.enabled() {
        match node.auth().reload(config) {
            Ok(auth::Reloaded { users, jwt }) => Ok(match (users, jwt) {
                (Some(n), true) => format!("users file ({n} users) and JWT keys"),
                (Some(n), false) => format!("users file ({n} users)"),
                (None, _) => "JWT keys".to_owned(),
            }),
            Err(e) => Err(e.to_string()),
        }
    } else {
        Ok("no users file or JWT keys configured".to_owned())
    };
    let tls = match &config.tls {
        None => Ok("no TLS certificate configured".to_owned()),
        Some(files) => match transport::tls::acceptor(files) {
            Ok(acceptor) => {
                node.set_tls(acceptor);
                Ok(format!("TLS certificate {}", files.cert.display()))
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match (auth, tls) {
        (Ok(auth), Ok(tls)) => tracing::info!(auth = %auth, tls = %tls, "reloaded on SIGHUP"),
        (auth, tls) => {
            let part = |r: &Result<String, String>| match r {
                Ok(done) => format!("reloaded: {done}"),
                Err(why) => format!("kept the old one: {why}"),
            };
            tracing::error!(auth = %part(&auth), tls = %part(&tls), "reload on SIGHUP failed in part")
        }
    }
}

/// SIGHUP, listened for from now on: from this call a SIGHUP no longer ends the process (the
/// default action), it reloads ([`reload`], by [`reload_on`]).
#[cfg(unix)]
fn hangups() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP: it will stop the node"))
        .ok()
}

/// Reloads on every SIGHUP until aborted.
#[cfg(unix)]
async fn reload_on(mut hangups: tokio::signal::unix::Signal, node: Arc<Node>) {
    while hangups.recv().await.is_some() {
        let node = node.clone();
        let _ = tokio::task::spawn_blocking(move || reload(&node)).await;
    }
}

/// The node's bound sockets. Binding happens before [`run`], so tests can bind port 0 and read
/// the chosen ports.
pub struct Listeners {
    pub ws: TcpListener,
    pub stomp: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses the configuration names.
    pub async fn bind(config: &Config) -> Result<Listeners, Error> {
        async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
            TcpListener::bind(addr).await.map_err(|source| Error::Bind { setting, addr, source })
        }
        let ws = bind(settings::LISTEN.name, config.listen).await?;
        let stomp = match config.stomp_listen {
            Some(addr) => Some(bind(settings::STOMP_LISTEN.name, addr).await?),
            None => None,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(settings::ADMIN_LISTEN.name, addr).await?),
            None => None,
        };
        Ok(Listeners { ws, stomp, admin })
    }
}

/// Runs a node until `shutdown` resolves, then drains: readiness turns false, listeners stop
/// accepting, sessions close spread over the drain period (ERROR, then WebSocket close 1012),
/// and their unacknowledged queue messages return to their queues.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    #[cfg(unix)]
    let hangups = hangups();
    let security = Security::load(&config)?;
    security.warn(&config);
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let engine = match &config.redis_url {
        None => AnyEngine::Memory(MemoryEngine::new(config.clone(), metrics.clone())),
        Some(_) => AnyEngine::Redis(
            RedisEngine::connect(config.clone(), metrics.clone()).await.map_err(Error::ClusterEngine)?,
        ),
    };
    let engine_name = match engine {
        AnyEngine::Memory(_) => "memory",
        AnyEngine::Redis(_) => "redis",
    };
    let hub = Hub::new(engine, metrics.clone());
    let (drain, drain_signal) = Drain::new();
    let node = Arc::new(
        Node::new(config.clone(), hub, metrics, drain_signal).with_security(security.auth, security.tls),
    );

    let mut tasks = tokio::task::JoinSet::new();
    #[cfg(unix)]
    let reloads = hangups.map(|hangups| tokio::spawn(reload_on(hangups, node.clone())));
    #[cfg(not(unix))]
    let reloads: Option<tokio::task::JoinHandle<()>> = None;
    let tls = node.tls().is_some();
    if let Ok(addr) = listeners.ws.local_addr() {
        tracing::info!(%addr, path = transport::ws::PATH, tls, "WebSocket listening");
    }
    tasks.spawn(transport::ws::serve(listeners.ws, node.clone()));
    if let Some(listener) = listeners.stomp {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, tls, "STOMP over TCP listening");
        }
        tasks.spawn(transport::tcp::serve(listener, node.clone()));
    }
    let admin = listeners.admin.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listening");
        }
        tokio::spawn(http::serve(listener, node.clone()))
    });
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(node = %config.node_id, engine = engine_name, workers, "node started");

    shutdown.await;
    tracing::info!(
        period = %humantime::format_duration(config.drain_period),
        connections = node.connections(),
        "draining"
    );
    drain.start();
    let deadline = tokio::time::Instant::now() + config.drain_period + Duration::from_secs(5);
    while node.connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.shutdown().await;
    engine::Engine::close(node.hub().engine()).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    tracing::info!(left = node.connections(), "stopped");
    Ok(())
}
