#!/usr/bin/env bash
# The reproducible benchmark: Stampede (1 node, and N nodes on Redis), the peers (RabbitMQ Web-STOMP,
# ActiveMQ over STOMP, NATS over WebSocket) and a raw WebSocket broadcast baseline, under the same
# scenarios, on loopback, and the nodes on a sharded Redis Cluster per number of primaries; writes
# docs/benchmarks.md.
#
#   bench/run.sh                 full run (about 20 minutes)
#   bench/run.sh --short         smoke run (about 3 minutes)
#   bench/run.sh --targets apps --out target/bench/apps.md
#                                the applications phase alone: hooks and an HTTP backend (1 minute)
#   bench/run.sh --targets cluster-sharded --out target/bench/sharded.md
#                                the nodes on a Redis Cluster of 1, 2 and 3 primaries alone (3 minutes)
#   bench/run.sh --help          every option of bench-suite
#
# Installs nothing: it checks the prerequisites and says how to get what is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then
    cargo build --release --quiet -p stampede-bench --bin bench-suite
    exec target/release/bench-suite --help
fi

missing=()
command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
want_target() { # want_target NAME ARGS...: no --targets given, or NAME among them
    local name=$1
    shift
    [[ " $* " != *" --targets"* ]] || [[ " $* " == *"$name"* ]]
}
if want_target cluster "$@"; then
    command -v redis-server >/dev/null || missing+=("redis-server (apt-get install redis-server)")
    command -v redis-cli >/dev/null || missing+=("redis-cli (apt-get install redis-server)")
fi
if want_target rabbitmq "$@" && [[ " $* " != *" --rabbitmq-url "* ]]; then
    if [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && ! command -v rabbitmq-server >/dev/null; then
        missing+=("rabbitmq-server (apt-get install rabbitmq-server; the suite enables rabbitmq_web_stomp in its own node, like 'rabbitmq-plugins enable rabbitmq_web_stomp', Web-STOMP on 127.0.0.1:15674 at /ws)")
    fi
fi
if want_target activemq "$@"; then
    [[ -f /usr/share/activemq/bin/activemq.jar ]] || missing+=("activemq (apt-get install activemq; the suite starts its own broker with a STOMP connector on loopback)")
    command -v java >/dev/null || missing+=("java (apt-get install default-jre-headless)")
fi
if want_target nats "$@"; then
    command -v nats-server >/dev/null || missing+=("nats-server (apt-get install nats-server; the suite starts its own, websocket on, no_tls, loopback)")
fi
if ((${#missing[@]})); then
    echo "bench/run.sh: missing prerequisites:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    echo "Install them (Debian/Ubuntu: apt-get update && apt-get install -y redis-server rabbitmq-server activemq nats-server)," >&2
    echo "or leave out their targets, e.g. --targets baseline,memory." >&2
    exit 2
fi

# One descriptor per connection, in the load generator and in each broker: go as high as allowed.
hard=$(ulimit -Hn)
ulimit -n "$hard" 2>/dev/null || true
soft=$(ulimit -n)
if [[ "$soft" != unlimited ]] && ((soft < 110000)); then
    echo "bench/run.sh: the open-files limit is $soft (hard $hard); 100,000 idle connections need more." >&2
    echo "  Raise it (as root: ulimit -Hn 1048576, or LimitNOFILE= / limits.conf) and fs.nr_open;" >&2
    echo "  the idle scenario will run as many connections as fit and report the count it reached." >&2
fi

echo "bench/run.sh: building release binaries" >&2
cargo build --release -p stampede -p stampede-bench --bins

notes=()
[[ -f bench/notes.md ]] && notes=(--notes bench/notes.md)
exec "$root/target/release/bench-suite" --bin-dir "$root/target/release" \
    --command-line "bench/run.sh${*:+ $*}" "${notes[@]}" "$@"
