//! The one test kit of the Stampede workspace: everything a test needs to run the real thing
//! (real `redis-server`, real nodes, real sockets), to talk to it, and to wait for what becomes
//! true. Used by the node suites (`node/tests`, as a dev-dependency), the engine contract tests
//! inside the node (`node/src/engine/contract.rs`, the Redis launcher and waits only),
//! `cluster-tests` and `bench`.
//!
//! # Layout
//! - [`client`]: [`Client`], the one STOMP test client, on the broker's own codec: over TCP,
//!   TLS, WebSocket and secure WebSocket, frames or raw bytes (hand-made WebSocket frames too);
//!   each helper as `try_x` (a [`ClientError`]) and `x` (panics, describing what went wrong).
//! - [`local`]: [`local::TestNode`], a node inside the test process (`stampede::run` on port-0
//!   listeners, its own runtime, its tracing captured into its [`Log`] and printed when the test
//!   fails), and [`local::Cluster`], the nodes of one [`Variant`]; [`local::apply_flags`]
//!   configures one from command-line flags.
//! - [`cluster`]: [`Cluster`] and [`Node`], `stampede` processes (the binary cargo builds);
//!   kill -9, SIGTERM, restart on the same ports; [`Cluster::of`] starts a [`Variant`].
//! - [`redis`]: [`Redis`], the one `redis-server` launcher: with the append-only file or without
//!   persistence; kill, restart, SIGSTOP; raw commands; [`redis::shared`], one per test binary.
//! - [`topology`]: the Redis deployments past one server, from Debian's binaries:
//!   [`RedisCluster`] (masters, replicas, `redis-cli --cluster create`) and [`RedisSentinel`]
//!   (a master, a replica, three Sentinels), each able to kill a master and wait for the
//!   failover; [`RedisDeployment`], what [`Cluster::start`] takes of any of them.
//! - [`variant`]: the matrix a scenario runs on (engine × transport × node count): [`Variant`],
//!   [`EngineKind`] (where the engines differ by design, stated once), and the macros
//!   [`variants!`], [`every_engine!`], [`both_transports!`].
//! - [`wait`]: [`eventually_eq`], [`eventually`], [`eventually_some`], [`holds_within`], on one
//!   polling loop: a wait that fails says what it awaited, the expected value and the last seen.
//! - [`http`]: requests to the admin port (chunked bodies decoded once, here), and
//!   [`http::metric`], the reader of `/metrics`.
//! - [`process`]: free ports, captured logs ([`Log`]), signals.
//! - [`system`]: programs from outside the workspace (`redis-server`, `node`, `chromium`),
//!   installed from Debian's packages when missing.
//! - [`keys`]: the security suites' key material: users file, JWT keys, JWKS, TLS certificate,
//!   token minting.
//! - [`prelude`]: what a node suite imports in one line.
//!
//! A failing test prints the log of every node and Redis it started, in-process nodes included:
//! each prints its own when dropped while the thread panics. Set `CLUSTER_TEST_KEEP_LOGS=<dir>`
//! to also write them to files, pass or fail; `RUST_LOG` sets the in-process nodes' level and
//! prints their lines live.

pub mod client;
pub mod cluster;
pub mod http;
pub mod keys;
pub mod local;
pub mod process;
pub mod redis;
pub mod system;
pub mod topology;
pub mod variant;
pub mod wait;

pub use client::{Client, ClientError, Endpoint};
pub use cluster::{Cluster, Node};
pub use process::Log;
pub use redis::Redis;
pub use topology::{RedisCluster, RedisDeployment, RedisSentinel};
pub use variant::{EngineKind, Transport, Variant};
pub use wait::{eventually, eventually_eq, eventually_some, holds_within};

/// What the node suites (`node/tests`) import in one line: the in-process [`local::TestNode`]
/// and [`local::Cluster`], the client and its frame helpers, the variants, the waits, HTTP and
/// metrics, and the security suites' key material.
pub mod prelude {
    pub use crate::client::{
        ack_frame, ack_id, assert_error, body, header, nack_frame, send_frame, show, subscribe_frame,
        ws_frame, BoxStream, Client, ClientError, WsKind, WsResponse, QUIET, WAIT,
    };
    pub use crate::http::{metric, Response as HttpResponse};
    pub use crate::keys::*;
    pub use crate::local::{
        apply_flags, under_attack, Bystander, Cluster, TestNode, BYSTANDER_TOPIC, PUBLISHED,
    };
    pub use crate::redis::{shared as redis, Resp};
    pub use crate::variant::{EngineKind, Transport, Variant};
    pub use crate::wait::{eventually, eventually_eq, eventually_some, holds_within};
    pub use crate::{both_transports, every_engine, variants};
}
