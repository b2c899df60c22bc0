//! The one `redis-server` launcher of the workspace: a real server started from PATH on a free
//! port, in its own temp directory, with its output captured into a [`Log`] (printed when a test
//! fails). Two kinds:
//! - [`Redis::start`]: the append-only file on and fsynced on every write, so a [`Redis::kill`]
//!   followed by [`Redis::restart`] loses nothing that Redis acknowledged (the multi-node
//!   scenarios);
//! - [`Redis::start_ephemeral`] (and [`Redis::reserve`], a port without a server yet): no
//!   persistence, for tests of the engine that only need a server (a restart comes back empty);
//! - [`Redis::start_tls`]: the same, speaking TLS only, with a certificate of a [`TestCa`]
//!   (clients are not asked for one), for `rediss://`.
//!
//! The processes of a Redis Cluster or a Sentinel deployment ([`crate::topology`]) are the same
//! launcher with arguments of their own: a cluster node (`cluster-enabled`), a replica
//! (`replicaof`), a Sentinel (`--sentinel`, from a config file it may rewrite).
//!
//! [`shared`] is one ephemeral server for a whole test binary, tied to the test process so it
//! ends with it, passed, failed or killed; tests on it keep apart by key prefix.
//! [`Redis::call`] sends one raw command (RESP) and returns the reply ([`call_all`]: several
//! on one connection); [`Redis::cli`] runs `redis-cli` (both on plain servers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command};
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::keys::TestCa;
use crate::process::{free_port, temp_dir, Log, Process, KEEP_LOGS_ENV};
use crate::wait::poll_every;

/// How long Redis may take to answer PING after a start or restart (AOF replay included).
const START_PATIENCE: Duration = Duration::from_secs(20);

/// How long one [`Redis::call`] may take.
const CALL_PATIENCE: Duration = Duration::from_secs(5);

/// A `redis-server` process. Stopped (SIGKILL) and its directory removed on drop; its log is
/// printed on drop if the test is failing.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    /// The append-only file on (fsync always), or no persistence at all.
    persistent: bool,
    /// Run under [`LIFELINE_WRAPPER`], which ends the server with the test process ([`shared`]).
    tied: bool,
    /// TLS only, on `port`: the certificate files (read at every start) and a client trusting
    /// their CA, for PING.
    tls: Option<(TlsFiles, TlsConnector)>,
    /// The writing end of a tied server's standard input.
    lifeline: Mutex<Option<ChildStdin>>,
    /// Arguments after the launcher's own (cluster mode, `replicaof`): a topology's member.
    extra_args: Vec<String>,
    /// A Sentinel: the text of its config file, written at the first start only (Sentinel
    /// rewrites the file as it learns, and a restart must keep what it learnt). Port, bind and
    /// directory are in it; no other argument is passed.
    sentinel_config: Option<String>,
    log: Log,
    process: Mutex<Option<Process>>,
}

impl Redis {
    /// Starts `redis-server` with the append-only file on and waits until it answers PING.
    pub async fn start() -> Redis {
        let redis = Redis::new(true);
        redis.spawn();
        redis.wait_until_up().await;
        redis
    }

    /// Starts `redis-server` without persistence and waits until it answers PING.
    pub async fn start_ephemeral() -> Redis {
        let redis = Redis::reserve();
        redis.spawn();
        redis.wait_until_up().await;
        redis
    }

    /// A free port and a directory for a server without persistence, not started yet: see
    /// [`Redis::restart`].
    pub fn reserve() -> Redis {
        Redis::new(false)
    }

    /// Starts `redis-server` without persistence, speaking TLS only (no plain port) with the
    /// server certificate of `ca`, and waits until it answers PING over TLS. Clients need no
    /// certificate. `ca`'s files must outlive a [`Redis::restart`].
    pub async fn start_tls(ca: &TestCa) -> Redis {
        let mut redis = Redis::new(false);
        let files = TlsFiles { cert: ca.server.cert.clone(), key: ca.server.key.clone(), ca: ca.ca.clone() };
        redis.tls = Some((files, ca.connector()));
        redis.spawn();
        redis.wait_until_up().await;
        redis
    }

    fn new(persistent: bool) -> Redis {
        Redis::member("redis", free_port(), persistent, Vec::new())
    }

    /// A server of a topology, not started yet: named `name` in logs, on `port`, with
    /// `extra_args` after the launcher's own.
    pub(crate) fn member(name: &str, port: u16, persistent: bool, extra_args: Vec<String>) -> Redis {
        Redis {
            port,
            dir: temp_dir(name),
            persistent,
            tied: false,
            tls: None,
            lifeline: Mutex::new(None),
            extra_args,
            sentinel_config: None,
            log: Log::new(name),
            process: Mutex::new(None),
        }
    }

    /// A Sentinel on a free port, not started yet, monitoring what `monitor` says: the lines
    /// of its config file after `port`, `bind` and `dir`.
    pub(crate) fn sentinel(name: &str, monitor: &str) -> Redis {
        let mut sentinel = Redis::member(name, free_port(), false, Vec::new());
        sentinel.sentinel_config = Some(format!(
            "port {}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n{monitor}",
            sentinel.port,
            sentinel.dir.display()
        ));
        sentinel
    }

    /// Spawns it and waits until it answers PING: a topology's member.
    pub(crate) async fn launch(&self) {
        self.spawn();
        self.wait_until_up().await;
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server), for `--redis-url`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether its process runs (not killed, not exited).
    pub fn is_running(&self) -> bool {
        self.process.lock().expect("redis process").as_mut().is_some_and(|p| p.exit_status().is_none())
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

    /// Starts it (again) on the same port and directory (so the AOF, if any, is replayed) and
    /// waits until it answers PING. Kills it first if it still runs.
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        self.wait_until_up().await;
    }

    /// Whether it answers PING now (over TLS for a TLS server, verifying its certificate).
    pub async fn ping(&self) -> bool {
        async fn ping_on(mut stream: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<bool> {
            stream.write_all(b"PING\r\n").await?;
            let mut reply = [0u8; 64];
            let n = stream.read(&mut reply).await?;
            Ok(reply[..n].starts_with(b"+PONG"))
        }
        let attempt = async {
            let stream = TcpStream::connect(self.addr()).await?;
            match &self.tls {
                None => ping_on(stream).await,
                Some((_, connector)) => {
                    let name = ServerName::IpAddress(self.addr().ip().into());
                    ping_on(connector.connect(name, stream).await?).await
                }
            }
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Ok(true)))
    }

    /// Sends `kill -<signal>` (e.g. `STOP`, `CONT`) to the running server: SIGSTOP leaves its
    /// connections open while nothing answers, as when the network to it is cut.
    pub fn signal(&self, signal: &str) {
        let pid = self.process.lock().expect("redis process").as_ref().map(Process::pid);
        let pid = pid.expect("redis-server is running").to_string();
        self.log.note(&format!("SIG{signal} pid {pid}"));
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// One command on a fresh connection; returns the reply. Plain servers only.
    pub async fn call(&self, args: &[&str]) -> Resp {
        assert!(self.tls.is_none(), "Redis::call speaks plain RESP; this server speaks TLS only");
        call(self.addr(), args).await
    }

    /// Runs `redis-cli` against it with `args` and returns what it printed (trimmed). Plain
    /// servers only.
    pub async fn cli(&self, args: &[&str]) -> String {
        assert!(self.tls.is_none(), "Redis::cli connects in plain text; this server speaks TLS only");
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
        crate::system::require("redis-server", "redis-server");
        if let Some(config) = &self.sentinel_config {
            let file = self.dir.join("sentinel.conf");
            if !file.exists() {
                std::fs::write(&file, config)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            }
            let mut command = Command::new("redis-server");
            command.arg(&file).arg("--sentinel");
            *self.process.lock().expect("redis process") = Some(Process::spawn(command, &self.log));
            return;
        }
        let mut command = if self.tied {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(LIFELINE_WRAPPER).arg("sh");
            sh
        } else {
            Command::new("redis-server")
        };
        command.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((files, _)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca),
        };
        command.arg("--dir").arg(&self.dir).args([
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--loglevel",
            "notice",
        ]);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        command.args(&self.extra_args);
        let process = if self.tied {
            let (process, lifeline) = Process::spawn_tied(command, &self.log);
            *self.lifeline.lock().expect("redis lifeline") = Some(lifeline);
            process
        } else {
            Process::spawn(command, &self.log)
        };
        *self.process.lock().expect("redis process") = Some(process);
    }

    async fn wait_until_up(&self) {
        if let Err(why) = self.try_wait_until_up().await {
            panic!("{why}");
        }
    }

    async fn try_wait_until_up(&self) -> Result<(), String> {
        // Done (`Ok`) when it answers PING or has exited; polled again (`Err`) otherwise.
        let outcome = poll_every(START_PATIENCE, Duration::from_millis(25), || async {
            if self.ping().await {
                return Ok(None);
            }
            let exited = self.process.lock().expect("redis process").as_mut().and_then(Process::exit_status);
            exited.map(Some).ok_or(())
        })
        .await;
        match outcome {
            Ok(None) => {
                self.log.note("answers PING");
                Ok(())
            }
            Ok(Some(status)) => {
                Err(format!("redis-server on port {} exited ({status}) before answering PING", self.port))
            }
            Err(()) => Err(format!(
                "redis-server on port {} did not answer PING within {START_PATIENCE:?}",
                self.port
            )),
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

// === the shared server ===

/// The `redis-server` of this test binary, without persistence, started on first use and tied
/// to the test process: a static is never dropped, so the server ends when its standard input,
/// a pipe this process holds open until it exits, reaches EOF; passed, failed or killed. Not for
/// kill or restart (they would stop the shell, not Redis).
pub async fn shared() -> &'static Redis {
    static REDIS: tokio::sync::OnceCell<Redis> = tokio::sync::OnceCell::const_new();
    REDIS
        .get_or_init(|| async {
            let found = Command::new("redis-server")
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(found, "the Redis variants need `redis-server` on PATH");
            let mut failures = Vec::new();
            // A port can be taken between choosing it and Redis binding it: try a few.
            for _ in 0..5 {
                let mut redis = Redis::new(false);
                redis.tied = true;
                redis.spawn();
                match redis.try_wait_until_up().await {
                    Ok(()) => return redis,
                    Err(why) => failures.push(why),
                }
            }
            panic!("redis-server did not start: {failures:?}");
        })
        .await
}

/// The files a TLS server reads at every start: its certificate and key, and the CA that signed
/// them (redis-server wants one even when it asks clients for no certificate).
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// `$@`: redis-server's arguments. Exits when Redis does (so a failed start is seen).
const LIFELINE_WRAPPER: &str = r#"redis-server "$@" </dev/null & pid=$!
exec 3<&0
( cat <&3 >/dev/null; kill $pid 2>/dev/null ) &
wait $pid"#;

/// A script (for `EVAL <script> 1 <stream key>`) that answers how many entries of a queue's
/// stream are ready: its length less what its consumer group holds pending. The queue's key is
/// `<prefix>:{<queue>}:q` and the group `stampede` (the module doc of `engine/redis`).
pub const READY_ENTRIES: &str = "local len = redis.call('XLEN', KEYS[1]) \
                                 local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], 'stampede') \
                                 local pending = 0 \
                                 if ok then pending = tonumber(p[1]) or 0 end \
                                 return len - pending";

// === RESP ===

/// A Redis reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// One command to the server at `addr` on a fresh connection; returns the reply.
pub async fn call(addr: SocketAddr, args: &[&str]) -> Resp {
    try_call(addr, args).await.unwrap_or_else(|e| panic!("{args:?} to Redis at {addr}: {e}"))
}

/// [`call`], for a server that may be down (a probe during a failover): what went wrong
/// instead of a panic.
pub async fn try_call(addr: SocketAddr, args: &[&str]) -> Result<Resp, String> {
    let mut replies = try_call_all(addr, &[args]).await?;
    replies.pop().ok_or_else(|| "no reply".to_owned())
}

/// Several commands, one after the other on one connection; returns their replies. For what
/// needs its own connection's state: `WAIT` after a write counts the replicas that have that
/// connection's writes.
pub async fn call_all(addr: SocketAddr, commands: &[&[&str]]) -> Vec<Resp> {
    try_call_all(addr, commands).await.unwrap_or_else(|e| panic!("{commands:?} to Redis at {addr}: {e}"))
}

async fn try_call_all(addr: SocketAddr, commands: &[&[&str]]) -> Result<Vec<Resp>, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let mut replies = Vec::new();
        for args in commands {
            stream.write_all(&resp_command(args)).await.map_err(|e| format!("write: {e}"))?;
            let mut buf = Vec::new();
            loop {
                if let Some((reply, _)) = parse_resp(&buf) {
                    replies.push(reply);
                    break;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("Redis closed the connection".to_owned());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        Ok(replies)
    };
    tokio::time::timeout(CALL_PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {CALL_PATIENCE:?}")))
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from the start of `buf` and its length, or None when `buf` holds less.
fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[1..end]).expect("a UTF-8 reply line");
    let after = end + 2;
    match buf.first()? {
        b'+' => Some((Resp::Simple(line.to_owned()), after)),
        b'-' => Some((Resp::Error(line.to_owned()), after)),
        b':' => Some((Resp::Int(line.parse().expect("an integer")), after)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().expect("a length")) else {
                return Some((Resp::Bulk(None), after));
            };
            let bytes = buf.get(after..after + len)?.to_vec();
            buf.get(after + len..after + len + 2)?;
            Some((Resp::Bulk(Some(bytes)), after + len + 2))
        }
        b'*' => {
            let Ok(n) = usize::try_from(line.parse::<i64>().expect("a count")) else {
                return Some((Resp::Array(None), after));
            };
            let mut items = Vec::with_capacity(n);
            let mut at = after;
            for _ in 0..n {
                let (item, used) = parse_resp(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Resp::Array(Some(items)), at))
        }
        other => panic!("not a Redis reply: {:?}", *other as char),
    }
}
