//! The one test kit of the Stampede workspace: everything a test needs to run the real thing
//! (real `redis-server`, real nodes, real sockets) and to wait for what becomes true.
//!
//! # Layout
//! - [`redis`]: [`Redis`], one `redis-server` on a free port (with the append-only file, or
//!   without persistence); kill, restart, SIGSTOP; [`redis::shared`], one server per test binary.
//! - [`cluster`]: [`Cluster`] and [`Node`], N `stampede` processes (the binary cargo builds);
//!   kill -9, SIGTERM, restart on the same ports.
//! - [`client`]: [`Client`], STOMP 1.2 over WebSocket or TCP on the broker's own codec.
//! - [`http`]: requests to the admin port, chunked bodies decoded, and [`http::metric`], the
//!   reader of `/metrics`.
//! - [`wait`]: [`eventually_eq`], [`eventually`], [`eventually_some`]: patience for what becomes
//!   true across tasks and processes, on one polling loop.
//! - [`process`]: free ports, captured logs ([`Log`]), signals.
//!
//! A failing test prints the log of every process it started: each [`Node`] and each [`Redis`]
//! print theirs when dropped while the thread panics. Set `CLUSTER_TEST_KEEP_LOGS=<dir>` to
//! also write them to files, pass or fail.

pub mod client;
pub mod cluster;
pub mod http;
pub mod process;
pub mod redis;
pub mod variant;
pub mod wait;

pub use client::{Client, ClientError, Endpoint};
pub use cluster::{Cluster, Node};
pub use process::Log;
pub use redis::Redis;
pub use variant::{EngineKind, Transport, Variant};
pub use wait::{eventually, eventually_eq, eventually_some, holds_within};
