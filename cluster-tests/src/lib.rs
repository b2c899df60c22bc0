//! The multi-node test harness: real `redis-server` and real `stampede` processes on ports the
//! OS chose, driven by a small STOMP client, with every process's log printed when a test fails.
//!
//! # Layout
//! - [`redis`]: [`Redis`], one `redis-server` with the append-only file on; kill and restart.
//! - [`cluster`]: [`Cluster`] and [`Node`], N broker processes (the binary cargo builds);
//!   kill -9, SIGTERM, restart on the same ports.
//! - [`client`]: [`Client`], STOMP 1.2 over WebSocket or TCP on the broker's own codec.
//! - [`http`]: GET and POST for the admin port, over a bare `TcpStream`.
//! - [`wait`]: [`eventually`], patience for what becomes true across processes.
//! - [`process`]: free ports, captured logs ([`Log`]), signals.
//!
//! A failing test prints the log of every process it started: each [`Node`] and the [`Redis`]
//! print theirs when dropped while the thread panics. Set `CLUSTER_TEST_KEEP_LOGS=<dir>` to
//! also write them to files, pass or fail.
//!
//! The scenarios live in `tests/cluster.rs`; `README.md` says what each one proves.

pub mod client;
pub mod cluster;
pub mod http;
pub mod process;
pub mod redis;
pub mod wait;

pub use client::{Client, ClientError, Endpoint, Transport};
pub use cluster::{Cluster, Node};
pub use process::Log;
pub use redis::Redis;
pub use wait::{eventually, eventually_eq, eventually_some};
