//! One way to declare the matrix a scenario runs on: engine × transport × node count.
//!
//! A scenario is written once as `async fn name(v: V)` and [`variants!`] makes one test per
//! variant, `name::<variant>`, each on its own two-worker runtime. Everything else is a
//! shorthand for it: [`every_engine!`] (the in-process node suites: memory over both transports,
//! then one and three Redis nodes), [`both_transports!`] (one memory node's local mechanics).
//! `cluster-tests` and the engine contract tests (`node/src/engine/contract.rs`) call
//! [`variants!`] directly with their own variants.
//!
//! Where the engines differ by design, the expectation comes from [`EngineKind`]'s methods, the
//! one place that states the difference.

/// How a client reaches a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// STOMP over WebSocket at `/ws`.
    Ws,
    /// STOMP over plain TCP (or TLS when the node has it).
    Tcp,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Ws, Transport::Tcp];
}

/// The engine nodes run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// The embedded in-memory engine (one node).
    Memory,
    /// The Redis cluster engine.
    Redis,
}

/// What the engines do differently, by design: the one place scenarios take engine-specific
/// expectations from. Both behaviours are documented by the engines themselves:
/// - memory (`engine/memory.rs`): every publish reaches the node's hub (`watch` is a no-op);
///   released entries go "back to the head, in their original order"; the bound
///   (`queue-max-length`) is applied when a message is appended, so a release is never trimmed;
/// - Redis (module doc of `engine/redis`): a node SUBSCRIBEs to a destination only while it
///   watches it; `release` "re-adds entries **at the tail** (Redis cannot insert at a stream's
///   head)", one by one, and the bound "counts ready entries only; the oldest ready ones are
///   dropped past it", at every re-add too.
impl EngineKind {
    /// Whether a node is handed messages of destinations it does not watch.
    pub fn delivers_unwatched(self) -> bool {
        self == EngineKind::Memory
    }

    /// The order in which a queue delivers after `released` (unacknowledged or NACKed entries,
    /// in the order they were delivered) went back while `waiting` were ready: memory puts them
    /// before the waiting ones, Redis after them.
    pub fn order_after_release(self, released: &[&str], waiting: &[&str]) -> Vec<String> {
        let (first, then) = match self {
            EngineKind::Memory => (released, waiting),
            EngineKind::Redis => (waiting, released),
        };
        first.iter().chain(then).map(|s| s.to_string()).collect()
    }

    /// What a queue bounded to `max_length` holds (in delivery order) after `released` went back
    /// while `waiting` (at most `max_length`) were ready, and how many messages that dropped.
    /// Memory: all of them, released first, none dropped (the queue is above its bound until the
    /// next message is appended). Redis: each re-add at the tail drops the oldest ready entry
    /// past the bound, so the newest `max_length` are kept.
    pub fn bounded_after_release(
        self,
        released: &[&str],
        waiting: &[&str],
        max_length: usize,
    ) -> (Vec<String>, usize) {
        let all = self.order_after_release(released, waiting);
        match self {
            EngineKind::Memory => (all, 0),
            EngineKind::Redis => {
                let dropped = all.len().saturating_sub(max_length);
                (all[dropped..].to_vec(), dropped)
            }
        }
    }
}

/// One way to run a scenario: an engine, a number of nodes, a transport for its clients.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub engine: EngineKind,
    pub nodes: usize,
    pub transport: Transport,
}

impl Variant {
    /// One node on the memory engine.
    pub fn memory(transport: Transport) -> Variant {
        Variant { engine: EngineKind::Memory, nodes: 1, transport }
    }

    /// `nodes` nodes sharing one Redis.
    pub fn redis(nodes: usize, transport: Transport) -> Variant {
        Variant { engine: EngineKind::Redis, nodes, transport }
    }
}

/// Runs each scenario `async fn $scenario(v)` once per listed variant, as test
/// `$scenario::$test` on a multi-thread runtime with two workers. The variant expressions are
/// evaluated inside the scenario's test module, which sees the caller's items:
///
/// ```text
/// stampede_testkit::variants! {
///     topic_in_order: memory => Variant::memory(Transport::Ws), redis3 => Variant::redis(3, Transport::Ws);
/// }
/// ```
#[macro_export]
macro_rules! variants {
    ($($scenario:ident: $($test:ident => $variant:expr),+ $(,)?);* $(;)?) => {
        $(
            mod $scenario {
                #[allow(unused_imports)]
                use super::*;
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() {
                        super::$scenario($variant).await
                    }
                )+
            }
        )*
    };
}

/// Runs `async fn $name(t: Transport)` on one memory-engine node once per transport, as tests
/// `$name::memory_ws` and `$name::memory_tcp`: for scenarios about one node's local mechanics.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        $crate::variants! {
            $($name: memory_ws => $crate::Transport::Ws, memory_tcp => $crate::Transport::Tcp;)*
        }
    };
}

/// Runs `async fn $name(v: Variant)` on every engine variant: `memory_ws`, `memory_tcp`, then
/// one Redis node and three Redis nodes on one transport each. The transports of the Redis
/// variants alternate from one scenario to the next (`redis1_ws` + `redis3_tcp`, then
/// `redis1_tcp` + `redis3_ws`), so both transports meet both Redis variants in every file.
#[macro_export]
macro_rules! every_engine {
    (@variants $name:ident, $r1:ident, $t1:ident, $r3:ident, $t3:ident) => {
        $crate::variants! {
            $name:
                memory_ws => $crate::Variant::memory($crate::Transport::Ws),
                memory_tcp => $crate::Variant::memory($crate::Transport::Tcp),
                $r1 => $crate::Variant::redis(1, $crate::Transport::$t1),
                $r3 => $crate::Variant::redis(3, $crate::Transport::$t3);
        }
    };
    () => {};
    ($a:ident $(,)?) => {
        $crate::every_engine!(@variants $a, redis1_ws, Ws, redis3_tcp, Tcp);
    };
    ($a:ident, $b:ident $(, $rest:ident)* $(,)?) => {
        $crate::every_engine!(@variants $a, redis1_ws, Ws, redis3_tcp, Tcp);
        $crate::every_engine!(@variants $b, redis1_tcp, Tcp, redis3_ws, Ws);
        $crate::every_engine!($($rest),*);
    };
}
