//! The chat example (`examples/chat/`) end to end, as its README runs it: three `stampede`
//! processes on one Redis with `--app-backend-secret`, two replicas of `examples/chat/backend.py`
//! (stomp.py, real Python processes) consuming `/app/chat` as competing workers, users on every
//! node. `README.md` lists it as scenario 12.
//!
//! - Messages sent while no backend runs are kept (their RECEIPT means stored) and handled once
//!   the replicas start.
//! - One replica is killed with `kill -9` while it holds messages (a backlog, prefetch 10) and
//!   more are being sent: each message that got a RECEIPT is broadcast exactly once, to every
//!   subscriber of `/topic/messages` on every node, stamped with its sender's user. The backend
//!   answers and acknowledges in one transaction, so what the dead replica held and had not
//!   committed is handled by the other one (`redelivered`) and published once.
//! - The surviving replica's node is drained: it reconnects to the next node and goes on.
//! - An invalid message is answered on `/user/queue/errors` of the session that sent it, and of
//!   no other session of the same user; nothing is broadcast for it.
//! - The replica ends cleanly on SIGTERM (exit 0).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stampede::stomp::Frame;
use stampede_testkit::client::{body, header, show};
use stampede_testkit::cluster::RECLAIM_AFTER;
use stampede_testkit::process::{Log, Process};
use stampede_testkit::{system, wait, Client, Cluster, Node, Redis, Transport};

/// The nodes' `--app-backend-secret`. Not the test kit's client passcode (`secret`): users must
/// not get the backend role.
const SECRET: &str = "chat-backend-s3cret";
const CHAT: &str = "/app/chat";
const MESSAGES: &str = "/topic/messages";
const ERRORS: &str = "/user/queue/errors";

/// Messages each sender sends before any backend runs (the backlog the replicas share).
const BACKLOG: u64 = 60;
/// Messages each sender sends while a replica is being killed.
const DURING_KILL: u64 = 20;
/// Messages the killed replica handles before it dies.
const HANDLED_BEFORE_KILL: usize = 5;

/// Patience for one message that must come.
const RECV: Duration = Duration::from_secs(15);
/// A window in which nothing more may arrive.
const QUIET: Duration = Duration::from_millis(500);
/// A window for late duplicates: past the time after which a dead consumer's messages are
/// reclaimed, and the handling of them.
const SETTLE: Duration = Duration::from_secs(RECLAIM_AFTER.as_secs() + 2);
/// How long a replica may take to start (Python and stomp.py imports) and subscribe.
const BACKEND_START: Duration = Duration::from_secs(30);

const EMPTY: &str = "invalid message: the text is empty";
const NOT_JSON: &str = r#"invalid message: the body must be JSON such as {"text": "hello"}"#;
const TOO_LONG: &str = "invalid message: the text is longer than 500 characters (501)";

fn backend_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/chat/backend.py")
}

// === impl Replica ===

/// One `backend.py` process; its output (one line per message) in its [`Log`], printed when the
/// test fails.
struct Replica {
    log: Log,
    process: Process,
}

impl Replica {
    /// Starts a replica that connects to `nodes`, trying them in this order.
    fn start(python: &Path, name: &str, nodes: &[&Node]) -> Replica {
        let stomp: Vec<String> = nodes.iter().map(|node| node.tcp_addr().to_string()).collect();
        let mut command = Command::new(python);
        command
            .arg(backend_script())
            .args(["--stomp", &stomp.join(","), "--name", name, "--prefetch", "10"])
            .env("STAMPEDE_APP_BACKEND_SECRET", SECRET)
            .env("PYTHONUNBUFFERED", "1");
        let log = Log::new(name);
        let process = Process::spawn(command, &log);
        Replica { log, process }
    }

    /// Lines of its log containing `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log.text().matches(needle).count()
    }

    /// Messages it handled (committed).
    fn handled(&self) -> usize {
        self.count(": handled ")
    }

    /// Waits until its log holds `n` lines containing `needle`; panics if it exits first.
    async fn wait_for(&mut self, n: usize, needle: &str, within: Duration) {
        let outcome = wait::poll(within, || {
            let seen = self.count(needle);
            let exited = self.process.exit_status();
            async move {
                match exited {
                    Some(status) => Ok(Err(format!("exited ({status}) with {seen} × {needle:?} in its log"))),
                    None if seen >= n => Ok(Ok(())),
                    None => Err(seen),
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("{}: {why}, waiting for {n}", self.log.name()),
            Err(seen) => panic!("{}: {seen} × {needle:?} after {within:?}, waiting for {n}", self.log.name()),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.process.kill();
        self.log.on_drop();
    }
}

// === Helpers ===

async fn connect(node: &Node, transport: Transport, login: &str) -> Client {
    Client::connect_to(&node.endpoint(transport), Some(login))
        .await
        .unwrap_or_else(|e| panic!("connect to {} as {login}: {e}", node.id()))
}

fn chat_body(text: &str) -> String {
    serde_json::json!({ "text": text }).to_string()
}

/// Sends `seqs` as chat messages `<login> #<n>`, each waiting for its RECEIPT; returns the client
/// and the texts sent.
async fn send_chat(mut client: Client, login: &'static str, seqs: Range<u64>) -> (Client, Vec<String>) {
    let mut sent = Vec::new();
    for n in seqs {
        let text = format!("{login} #{n}");
        client
            .try_publish(CHAT, &chat_body(&text), &[("content-type", "application/json")])
            .await
            .unwrap_or_else(|e| panic!("{login}: SEND {text:?}: {e}"));
        sent.push(text);
    }
    (client, sent)
}

/// Every sender sends `seqs` at once; the senders and the texts sent come back.
async fn send_all(
    senders: Vec<(&'static str, Client)>,
    seqs: Range<u64>,
) -> (Vec<(&'static str, Client)>, Vec<String>) {
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(login, client)| {
            let seqs = seqs.clone();
            tokio::spawn(async move {
                let (client, sent) = send_chat(client, login, seqs).await;
                (login, client, sent)
            })
        })
        .collect();
    let (mut back, mut texts) = (Vec::new(), Vec::new());
    for task in tasks {
        let (login, client, sent) = task.await.expect("a sender");
        back.push((login, client));
        texts.extend(sent);
    }
    (back, texts)
}

/// A broadcast as the backend publishes it.
#[derive(Debug)]
struct Chat {
    id: String,
    from: String,
    text: String,
}

fn chat(frame: &Frame) -> Chat {
    assert_eq!(header(frame, "destination"), MESSAGES, "{}", show(frame));
    let json: serde_json::Value =
        serde_json::from_str(&body(frame)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", show(frame)));
    let field = |name: &str| {
        json[name].as_str().unwrap_or_else(|| panic!("no string {name:?} in {}", show(frame))).to_owned()
    };
    let at = field("at");
    assert!(at.ends_with('Z') && at.contains('T'), "`at` is not an ISO UTC time: {}", show(frame));
    let chat = Chat { id: field("id"), from: field("from"), text: field("text") };
    assert!(!chat.id.is_empty(), "an empty id: {}", show(frame));
    chat
}

/// Reads `n` broadcasts; checks that each text of `expected` came exactly once, from its sender
/// (the text starts with the sender's login), with ids all different. Returns text → id.
async fn each_once(reader: &mut Client, who: &str, expected: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut seen: BTreeMap<String, Vec<Chat>> = BTreeMap::new();
    for i in 0..expected.len() {
        let frame = reader
            .try_recv_message(RECV)
            .await
            .unwrap_or_else(|e| panic!("{who}: broadcast {i} of {}: {e}", expected.len()));
        let chat = chat(&frame);
        seen.entry(chat.text.clone()).or_default().push(chat);
    }
    let twice: Vec<_> = seen.iter().filter(|(_, chats)| chats.len() > 1).collect();
    let missing: Vec<_> = expected.iter().filter(|text| !seen.contains_key(*text)).collect();
    let unknown: Vec<_> = seen.keys().filter(|text| !expected.contains(*text)).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && unknown.is_empty(),
        "{who}: more than once: {twice:?}; missing: {missing:?}; never sent: {unknown:?}"
    );
    let mut ids = BTreeSet::new();
    seen.into_iter()
        .map(|(text, mut chats)| {
            let chat = chats.pop().expect("one");
            let sender = text.split(' ').next().expect("a login");
            assert_eq!(chat.from, sender, "{who}: the sender stamped on {chat:?}");
            assert!(ids.insert(chat.id.clone()), "{who}: id {} given twice", chat.id);
            (text, chat.id)
        })
        .collect()
}

/// The answer on `/user/queue/errors`: the text for the sender, without the routing header.
async fn error_for(client: &mut Client, who: &str) -> String {
    let frame = client.try_recv_message(RECV).await.unwrap_or_else(|e| panic!("{who}: no error answer: {e}"));
    assert_eq!(header(&frame, "destination"), ERRORS, "{}", show(&frame));
    assert_eq!(frame.get("x-stampede-session"), None, "the routing header is delivered: {}", show(&frame));
    body(&frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_backend_replicas_broadcast_each_message_once_across_a_kill_9() {
    let python = system::stomp_py("chat");
    let redis = Redis::start().await;
    let cluster = Cluster::start(3, &redis, &["--app-backend-secret", SECRET]).await;
    let node = |i: usize| cluster.node(i);

    // Readers of the chat on every node; senders on every node, each listening for its errors.
    let mut readers = vec![
        ("ann", connect(node(0), Transport::Ws, "ann").await),
        ("bob", connect(node(1), Transport::Tcp, "bob").await),
        ("carl", connect(node(2), Transport::Ws, "carl").await),
    ];
    for (who, reader) in &mut readers {
        reader.try_subscribe(MESSAGES, "chat", &[]).await.unwrap_or_else(|e| panic!("{who}: {e}"));
    }
    let mut senders = vec![
        ("dan", connect(node(0), Transport::Tcp, "dan").await),
        ("eve", connect(node(1), Transport::Ws, "eve").await),
        ("fay", connect(node(2), Transport::Tcp, "fay").await),
    ];
    for (who, sender) in &mut senders {
        sender.try_subscribe(ERRORS, "errors", &[]).await.unwrap_or_else(|e| panic!("{who}: {e}"));
    }

    // Sent while no backend runs: kept, and nothing reaches the readers.
    let (senders, mut sent) = send_all(senders, 0..BACKLOG).await;
    readers[0].1.try_quiet(QUIET).await.expect("nothing is broadcast without a backend");

    // Replica A on node-0, replica B on node-1; each tries the other nodes when its own is gone.
    let mut a = Replica::start(&python, "replica-a", &[node(0), node(1), node(2)]);
    let mut b = Replica::start(&python, "replica-b", &[node(1), node(2), node(0)]);
    a.wait_for(1, "consuming /app/chat", BACKEND_START).await;
    b.wait_for(1, "consuming /app/chat", BACKEND_START).await;
    a.wait_for(HANDLED_BEFORE_KILL, ": handled ", RECV).await;

    // More messages on their way while A dies holding its prefetched share of the backlog.
    let sending = tokio::spawn(send_all(senders, BACKLOG..BACKLOG + DURING_KILL));
    a.process.kill();
    let (mut senders, more) = sending.await.expect("the senders");
    sent.extend(more);
    let handled_by_a = a.handled();

    let expected: BTreeSet<String> = sent.iter().cloned().collect();
    assert_eq!(expected.len(), sent.len());
    let mut ids = Vec::new();
    for (who, reader) in &mut readers {
        ids.push((*who, each_once(reader, who, &expected).await));
    }
    for (who, seen) in &ids[1..] {
        assert!(seen == &ids[0].1, "{who} and {} got other ids for the same messages", ids[0].0);
    }
    // No late duplicate: A's messages were reclaimed and handled once.
    readers[0].1.try_quiet(SETTLE).await.expect("a broadcast more than the messages sent");
    for (who, reader) in &mut readers[1..] {
        reader.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("{who}: a broadcast too many: {e}"));
    }
    for (who, sender) in &mut senders {
        sender.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("{who}: an error for a valid message: {e}"));
    }
    let handled_by_b = b.handled();
    let redelivered = b.count("(redelivered)");
    eprintln!(
        "{} messages: replica-a handled {handled_by_a} before its kill -9, replica-b {handled_by_b} \
         ({redelivered} redelivered)",
        sent.len()
    );
    assert!(redelivered >= 1, "replica-a died holding nothing: the kill proved nothing");
    // A logs a message once its COMMIT's RECEIPT is in. The kill usually falls while A waits for
    // that RECEIPT (most of a message's time): the node has the COMMIT, and A dies before the line.
    let handled = handled_by_a + handled_by_b;
    assert!(handled == sent.len() || handled + 1 == sent.len(), "{handled} handled of {}", sent.len());

    // B's node is drained: B reconnects to the next node on its list (node-2) and goes on.
    drop(readers.remove(1));
    drop(senders.remove(1));
    cluster.node(1).stop().await;
    b.wait_for(2, "consuming /app/chat", RECV).await;
    let node_2 = format!("consuming /app/chat on {} ", node(2).tcp_addr());
    assert_eq!(b.count(&node_2), 1, "replica-b reconnected to node-2");

    // Invalid messages: answered to the sending session only (dan on node-0), not to dan's other
    // session (node-2), and not broadcast.
    let mut dan_too = connect(node(2), Transport::Ws, "dan").await;
    dan_too.try_subscribe(ERRORS, "errors", &[]).await.expect("dan's second session");
    let (_, dan) = &mut senders[0];
    let long = chat_body(&"x".repeat(501));
    for (bad, why) in [(chat_body("  "), EMPTY), ("hello".to_owned(), NOT_JSON), (long, TOO_LONG)] {
        dan.try_publish(CHAT, &bad, &[]).await.unwrap_or_else(|e| panic!("SEND {bad:?}: {e}"));
        assert_eq!(error_for(dan, "dan").await, why);
    }
    dan_too.try_quiet(QUIET).await.expect("another session of the sender gets no error");
    for (who, client) in readers.iter_mut().chain(senders[1..].iter_mut()) {
        client.try_quiet(QUIET).await.unwrap_or_else(|e| panic!("{who}: got something of dan's: {e}"));
    }

    // Still chatting through the reconnected replica.
    let (_, fay) = &mut senders[1];
    fay.try_publish(CHAT, &chat_body("fay after the drain"), &[]).await.expect("SEND");
    for (who, reader) in &mut readers {
        let frame = reader.try_recv_message(RECV).await.unwrap_or_else(|e| panic!("{who}: {e}"));
        let chat = chat(&frame);
        assert_eq!((chat.from.as_str(), chat.text.as_str()), ("fay", "fay after the drain"));
    }

    // SIGTERM: B finishes, says goodbye and exits 0.
    let status = b.process.terminate(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()), "replica-b after SIGTERM: {status:?}");
}
