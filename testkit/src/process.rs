//! What every child process of a test shares: ports chosen by the OS, a captured log, signals.
//!
//! A [`Process`] is a spawned child whose stdout and stderr are read line by line, by one
//! thread per pipe, into its [`Log`]. The harness writes its own events (start, SIGKILL,
//! SIGTERM, exit status) into the same log, so a dumped log tells the whole story of a node.
//! Dropping a `Process` kills it (SIGKILL) and reaps it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable naming a directory where every process's log is written when its owner
/// is dropped, pass or fail (one folder per test, one file per process).
pub const KEEP_LOGS_ENV: &str = "CLUSTER_TEST_KEEP_LOGS";

/// When the test process started: log lines are stamped relative to it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The ports this test process has handed out.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A port on 127.0.0.1 that was free a moment ago and that this test process has not handed
/// out before, so tests running in parallel never pick the same one.
pub fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address of a bound socket").port();
        if TAKEN.lock().expect("port set").insert(port) {
            return port;
        }
    }
}

/// A Redis Cluster node's port `p`: like [`free_port`], and `p + 10000` (its cluster bus, which
/// Redis derives from it) was free a moment ago too. Both are handed out.
pub fn free_port_with_bus() -> u16 {
    const BUS_OFFSET: u16 = 10_000;
    // The OS hands out ports from its ephemeral range (32768..60999 on Linux): about half of
    // them have room for the bus below 65536. Ports tried and unfit stay handed out, harmlessly.
    for _ in 0..1000 {
        let port = free_port();
        let Some(bus) = port.checked_add(BUS_OFFSET) else { continue };
        if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok()
            && TAKEN.lock().expect("port set").insert(bus)
        {
            return port;
        }
    }
    panic!("no free port p with p + {BUS_OFFSET} free too, in 1000 tries");
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(what: &str) -> PathBuf {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut next = NEXT.lock().expect("temp dir counter");
        *next += 1;
        *next
    };
    let dir = std::env::temp_dir().join(format!("cluster-tests-{}-{what}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

// === impl Log ===

/// Everything a process (and the harness about it) said, in arrival order.
#[derive(Clone)]
pub struct Log {
    name: Arc<str>,
    text: Arc<Mutex<String>>,
}

impl Log {
    pub fn new(name: &str) -> Log {
        Log { name: Arc::from(name), text: Arc::new(Mutex::new(String::new())) }
    }

    /// The process's name, e.g. `node-1` or `redis`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a harness event.
    pub fn note(&self, event: &str) {
        self.line("harness", event);
    }

    /// Appends one line said by `source` (`out`, `err`, `harness`, `log`).
    pub fn line(&self, source: &str, line: &str) {
        let at = epoch().elapsed().as_secs_f64();
        let mut text = self.text.lock().expect("log");
        let _ = writeln!(text, "[{at:8.3}s {source}] {line}");
    }

    /// Everything so far.
    pub fn text(&self) -> String {
        self.text.lock().expect("log").clone()
    }

    /// Prints the whole log to stderr (the test harness shows it for a failed test).
    pub fn dump(&self) {
        let text = self.text();
        eprintln!(
            "\n===== log of {} ({} bytes) =====\n{text}===== end of {} =====",
            self.name,
            text.len(),
            self.name
        );
    }

    /// What the owner of a process does when it is dropped: print the log if the test is
    /// failing, and write it to [`KEEP_LOGS_ENV`]'s directory if that is set.
    pub fn on_drop(&self) {
        if std::thread::panicking() {
            self.dump();
        }
        if let Some(dir) = std::env::var_os(KEEP_LOGS_ENV).filter(|d| !d.is_empty()) {
            let test = std::thread::current().name().unwrap_or("unnamed").replace("::", "-");
            let dir = Path::new(&dir).join(test);
            let file = dir.join(format!("{}.log", self.name));
            if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, self.text())) {
                eprintln!("cannot keep the log of {} in {}: {e}", self.name, file.display());
            }
        }
    }

    /// Starts a thread copying `pipe` into the log, line by line, until it closes.
    fn capture(&self, source: &'static str, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::Builder::new()
            .name(format!("log-{}-{source}", self.name))
            .spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let text = String::from_utf8_lossy(&line);
                            log.line(source, text.trim_end_matches(['\n', '\r']));
                        }
                    }
                }
            })
            .expect("spawn a log thread")
    }
}

// === impl Process ===

/// A running child with its output captured into a [`Log`].
pub struct Process {
    child: Child,
    log: Log,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `command` with piped output. Variables `STAMPEDE_*` of the test's environment are
    /// removed, so only the arguments configure the child; colours are turned off.
    pub fn spawn(command: Command, log: &Log) -> Process {
        Process::spawn_with(command, log, Stdio::null()).0
    }

    /// Like [`Process::spawn`], with the child's standard input a pipe whose writing end is
    /// returned: a lifeline for a child that ends when it reads EOF, which happens when the
    /// returned end is dropped or this test process exits, however it exits.
    pub fn spawn_tied(command: Command, log: &Log) -> (Process, ChildStdin) {
        let (process, stdin) = Process::spawn_with(command, log, Stdio::piped());
        (process, stdin.expect("a stdin pipe"))
    }

    fn spawn_with(mut command: Command, log: &Log, stdin: Stdio) -> (Process, Option<ChildStdin>) {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STAMPEDE_") {
                command.env_remove(name);
            }
        }
        command.env("NO_COLOR", "1").stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
        let line = format!("{command:?}");
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
        log.note(&format!("started pid {}: {line}", child.id()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(log.capture("out", out));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(log.capture("err", err));
        }
        let stdin = child.stdin.take();
        (Process { child, log: log.clone(), readers, exited: None }, stdin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.log.note(&format!("exited: {status}"));
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// SIGKILL, then reap, then wait for the log threads to read the last output.
    pub fn kill(&mut self) {
        if self.exit_status().is_none() {
            self.log.note(&format!("SIGKILL pid {}", self.pid()));
            let _ = self.child.kill();
            match self.child.wait() {
                Ok(status) => {
                    self.log.note(&format!("exited: {status}"));
                    self.exited = Some(status);
                }
                Err(e) => self.log.note(&format!("wait failed: {e}")),
            }
        }
        self.join_readers();
    }

    /// Sends SIGTERM and waits up to `patience` for the exit; SIGKILL after that. Returns the
    /// exit status of a process that ended by itself.
    pub async fn terminate(&mut self, patience: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        self.log.note(&format!("SIGTERM pid {}", self.pid()));
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let sent = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        if !sent.is_ok_and(|s| s.success()) {
            self.log.note("kill -TERM failed");
        }
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                self.join_readers();
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.log.note(&format!("still running {patience:?} after SIGTERM"));
        self.kill();
        None
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
