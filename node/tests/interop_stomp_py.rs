//! Interop with a third-party client: stomp.py (from PyPI) drives the real `stampede` binary over
//! WebSocket (`WSStompConnection` at `/ws`) and over TCP (`Connection`): connect, subscribe,
//! send, receipts, ack, nack with redelivery, a transaction.
//!
//! stomp.py is installed into a virtual environment under the target directory the first time
//! (`python3 -m venv` + `pip install stomp.py`), so `cargo test` needs only python3 and PyPI.

use std::path::Path;
use std::process::Command;

use stampede_testkit::cluster::BIN_ENV;
use stampede_testkit::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomp_py_over_websocket_and_tcp() {
    let python = stampede_testkit::system::stomp_py("interop");
    // The binary cargo built for this test, started by the test kit (its log printed on failure).
    if std::env::var_os(BIN_ENV).is_none() {
        std::env::set_var(BIN_ENV, env!("CARGO_BIN_EXE_stampede"));
    }
    let cluster = Cluster::memory(&[]).await;
    let node = cluster.node(0);
    let (ws, tcp) = (node.ws_addr().port(), node.tcp_addr().port());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/stomp_py_client.py");
    let output = Command::new(python)
        .arg(script)
        .args(["127.0.0.1", &ws.to_string(), &tcp.to_string()])
        .output()
        .expect("run the stomp.py client");
    drop(cluster);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stomp.py client failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("websocket: ok")
            && stdout.contains("tcp (STOMP 1.1): ok")
            && stdout.contains("tcp (STOMP 1.2): ok"),
        "unexpected output:\n{stdout}\n{stderr}"
    );
}
