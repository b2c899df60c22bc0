//! Interop with a third-party client: stomp.py (from PyPI) drives the real `stampede` binary over
//! WebSocket (`WSStompConnection` at `/ws`) and over TCP (`Connection`): connect, subscribe,
//! send, receipts, ack, nack with redelivery, a transaction.
//!
//! stomp.py is installed into a virtual environment under the target directory the first time
//! (`python3 -m venv` + `pip install stomp.py`), so `cargo test` needs only python3 and PyPI.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STOMP_PY: &str = "stomp.py==9.0.0";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A python with stomp.py, made once per target directory.
fn python() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv");
    let python = target.join("bin/python3");
    let ready = target.join(".ready");
    if !ready.exists() {
        let status =
            Command::new("python3").arg("-m").arg("venv").arg(&target).status().expect("python3 runs");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", STOMP_PY])
            .status()
            .expect("pip runs");
        assert!(status.success(), "pip install {STOMP_PY} failed");
        std::fs::write(&ready, STOMP_PY).expect("mark venv ready");
    }
    python
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "node did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stomp_py_over_websocket_and_tcp() {
    let python = python();
    let (ws, tcp) = (free_port(), free_port());
    let node = Node(
        Command::new(env!("CARGO_BIN_EXE_stampede"))
            .args(["--listen", &format!("127.0.0.1:{ws}")])
            .args(["--stomp-listen", &format!("127.0.0.1:{tcp}")])
            .args(["--admin-listen", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stampede"),
    );
    wait_listening(ws);
    wait_listening(tcp);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/stomp_py_client.py");
    let output = Command::new(python)
        .arg(script)
        .args(["127.0.0.1", &ws.to_string(), &tcp.to_string()])
        .output()
        .expect("run the stomp.py client");
    drop(node);
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
