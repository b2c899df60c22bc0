//! A real `redis-server` for one test: started from PATH on a free port, in its own temp
//! directory, with the append-only file on and fsynced on every write, so a [`Redis::kill`]
//! followed by [`Redis::restart`] loses nothing that Redis acknowledged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{free_port, temp_dir, Log, Process, KEEP_LOGS_ENV};

/// How long Redis may take to answer PING after a start or restart (AOF replay included).
const START_PATIENCE: Duration = Duration::from_secs(20);

/// A `redis-server` process. Stopped (SIGKILL) and its directory removed on drop; its log is
/// printed on drop if the test is failing.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    log: Log,
    process: Mutex<Option<Process>>,
}

impl Redis {
    /// Starts `redis-server` and waits until it answers PING.
    pub async fn start() -> Redis {
        let port = free_port();
        let redis = Redis { port, dir: temp_dir("redis"), log: Log::new("redis"), process: Mutex::new(None) };
        redis.spawn();
        redis.wait_until_up().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`, for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data directory (holds `appendonlydir/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// SIGKILL: no shutdown save, no goodbye to clients. Only what the AOF holds survives.
    pub fn kill(&self) {
        if let Some(mut process) = self.process.lock().expect("redis process").take() {
            process.kill();
        }
    }

    /// Starts it again on the same port and directory (so the AOF is replayed) and waits until
    /// it answers PING. Kills it first if it still runs.
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        self.wait_until_up().await;
    }

    /// Whether it answers PING now.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let mut stream = TcpStream::connect(self.addr()).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 64];
            let n = stream.read(&mut reply).await?;
            Ok::<bool, std::io::Error>(reply[..n].starts_with(b"+PONG"))
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Ok(true)))
    }

    /// Runs `redis-cli` against it with `args` and returns what it printed (trimmed).
    pub async fn cli(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(output.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn spawn(&self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .args(["--daemonize", "no", "--logfile", "", "--loglevel", "notice"]);
        let process = Process::spawn(command, &self.log);
        *self.process.lock().expect("redis process") = Some(process);
    }

    async fn wait_until_up(&self) {
        let deadline = tokio::time::Instant::now() + START_PATIENCE;
        loop {
            if self.ping().await {
                self.log.note("answers PING");
                return;
            }
            let exited = self.process.lock().expect("redis process").as_mut().and_then(Process::exit_status);
            if let Some(status) = exited {
                panic!("redis-server on port {} exited ({status}) before answering PING", self.port);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("redis-server on port {} did not answer PING within {START_PATIENCE:?}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        self.log.on_drop();
        if std::env::var_os(KEEP_LOGS_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
