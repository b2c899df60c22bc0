//! Stampede's load generator and benchmark suite.
//!
//! - `stampede-bench` ([`cli`]): drives any STOMP-over-WebSocket broker (or STOMP over plain TCP,
//!   core NATS over WebSocket, the raw `ws-baseline` server) through one scenario and prints a
//!   table or JSON.
//! - `ws-baseline` ([`baseline`]): a minimal WebSocket broadcast server, the practical ceiling
//!   of this machine and stack.
//! - `bench-suite` ([`suite`]): the one reproducible benchmark: starts each target, runs every
//!   scenario against it with the same parameters, and writes `docs/benchmarks.md`.
//!
//! # Layout
//! [`stomp`] and [`nats`] (each protocol written and parsed by hand) → [`conn`] (connections from 127.0.0.x source
//! addresses, STOMP handshakes) → [`scenario`] (the five scenarios and their hot loops) →
//! [`report`]; [`stats`] holds the histograms, counters, flow control and `/proc` sampling;
//! [`app`] is the application backend (connect and subscribe hooks, an HTTP backend) that the
//! `connect` and `app-http` scenarios serve in-process for the node under test to call.

pub mod app;
pub mod baseline;
pub mod cli;
pub mod conn;
pub mod nats;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod stomp;
pub mod suite;

pub use conn::{Endpoint, Protocol};
pub use report::Report;
pub use scenario::{Common, Scenario};
