//! The admin web UI in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (CDP: JSON over a WebSocket, spoken here with tokio-tungstenite), against a real
//! `stampede` process with an admin token. The page asks for the token, shows the live node
//! list, a queue depth that follows the messages a STOMP client sends, and its Disconnect button
//! ends a STOMP client's session with an ERROR; its Purge button empties the queue and its
//! publish form reaches a STOMP subscriber.
//!
//! Every check reads the page's DOM with `Runtime.evaluate` and polls until it holds (the page
//! itself polls the API every 2 s); nothing is asserted after a fixed sleep.
//!
//! The ignored test [`regenerate_the_screenshot`] rewrites `docs/admin-ui.png` (see
//! docs/admin.md, "Web UI").

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use stampede_testkit::client::Endpoint;
use stampede_testkit::prelude::*;
use stampede_testkit::{system, Cluster, Redis};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the page may take to show something: a few of its 2 s polls.
const PATIENCE: Duration = Duration::from_secs(20);

/// The viewport, also the screenshot's size.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_ui_shows_the_cluster_and_disconnects_a_session() {
    let cluster = Cluster::memory(&["--admin-token", ADMIN_TOKEN]).await;
    let node = cluster.node(0);
    let admin = node.admin_url();
    let browser = Chromium::launch().await;

    // Without a token the page asks for one; a wrong token is refused; the right one opens it.
    browser.navigate(&format!("{admin}/#cluster")).await;
    browser.wait_for("the token form", "!document.getElementById('auth').hidden", json!(true)).await;
    browser.navigate(&format!("{admin}/#cluster&token=wrong")).await;
    browser
        .wait_for(
            "the wrong token refused, and removed from the address bar",
            "[location.hash, document.getElementById('auth-message').textContent.includes('refused')]",
            json!(["#cluster", true]),
        )
        .await;
    browser
        .eval(&format!(
            "document.getElementById('token-input').value = {}; \
             document.getElementById('token-form').requestSubmit(); true",
            js(ADMIN_TOKEN)
        ))
        .await;

    // The live node list: this node, with the connection a STOMP client opens.
    let tcp = Endpoint::Tcp(node.tcp_addr());
    let mut sender = Client::connect_to(&tcp, None).await.expect("a STOMP client connects");
    let row = format!(
        "document.querySelector('#nodes tr[data-node-id=\"' + CSS.escape({}) + '\"]')",
        js(node.id())
    );
    browser
        .wait_for(
            "the node in the node list, with one connection",
            &format!(
                "[{row}?.cells[0].firstChild.textContent, {row}?.querySelector('.connections').textContent]"
            ),
            json!([node.id(), "1"]),
        )
        .await;
    assert_eq!(browser.eval("document.getElementById('readiness').textContent").await, json!("Ready"));

    // A queue's depth follows the messages sent to it. The token comes in the address this time.
    browser.navigate(&format!("{admin}/#queues&token={ADMIN_TOKEN}")).await;
    let depth =
        "document.querySelector('#queues tr[data-queue=\"/queue/ui-jobs\"] td.depth')?.textContent ?? 'none'";
    sender.publish("/queue/ui-jobs", "1", &[]).await;
    browser
        .wait_for("the queue at depth 1", &format!("[location.hash, {depth}]"), json!(["#queues", "1"]))
        .await;
    sender.publish("/queue/ui-jobs", "2", &[]).await;
    sender.publish("/queue/ui-jobs", "3", &[]).await;
    browser.wait_for("the queue at depth 3", depth, json!("3")).await;

    // The Disconnect button of a session: its client gets an ERROR with the reason, then the close.
    let mut victim = Client::connect_to(&tcp, None).await.expect("a STOMP client connects");
    victim.subscribe("/topic/ui-news", "news", &[]).await;
    victim.subscribe("/topic/ui-extra", "extra", &[]).await;
    let session = victim.session().to_owned();
    browser.navigate(&format!("{admin}/#sessions")).await;
    let row = format!(
        "document.querySelector('#sessions tr[data-session=\"' + CSS.escape({}) + '\"]')",
        js(&session)
    );
    let chips = format!("[...({row}?.querySelectorAll('.chip') ?? [])].map((c) => c.dataset.destination)");
    browser
        .wait_for("the session with its subscriptions", &chips, json!(["/topic/ui-extra", "/topic/ui-news"]))
        .await;
    // The × of a subscription unsubscribes the session from it.
    browser
        .eval(&format!(
            "(() => {{ {row}.querySelector('.chip[data-destination=\"/topic/ui-extra\"] button.unsubscribe').click(); \
             return true; }})()"
        ))
        .await;
    browser.wait_for("one subscription left", &chips, json!(["/topic/ui-news"])).await;
    browser
        .eval(&format!(
            "(() => {{ document.getElementById('disconnect-reason').value = 'bye from the admin UI'; \
             const b = {row}.querySelector('button.disconnect'); b.click(); b.click(); return true; }})()"
        ))
        .await;
    let error = victim.expect_error().await;
    assert_error(&error, "bye from the admin UI");
    browser.wait_for("the session gone from the list", &format!("{row} === null"), json!(true)).await;
    // The other client is untouched.
    sender.publish("/queue/ui-jobs", "4", &[]).await;

    // Filtered by user, the page lists that user's sessions only, and disconnects them all.
    // (Authentication is off here: a login is taken at its word.)
    let mut mallory = [
        Client::connect_to(&tcp, Some("mallory")).await.expect("a STOMP client connects"),
        Client::connect_to(&tcp, Some("mallory")).await.expect("a STOMP client connects"),
    ];
    browser
        .eval(
            "(() => { const input = document.getElementById('session-user'); input.value = 'mallory'; \
             input.dispatchEvent(new Event('input')); return true; })()",
        )
        .await;
    let users =
        "[...document.querySelectorAll('#sessions tr[data-session] td.user')].map((td) => td.textContent)";
    browser.wait_for("mallory's two sessions only", users, json!(["mallory", "mallory"])).await;
    browser
        .eval(
            "(() => { const b = document.getElementById('disconnect-user'); b.click(); b.click(); \
             return true; })()",
        )
        .await;
    for client in mallory.iter_mut() {
        assert_error(&client.expect_error().await, "bye from the admin UI");
    }
    browser.wait_for("no session of mallory left", users, json!([])).await;

    // Purge (two clicks) empties the queue.
    browser.navigate(&format!("{admin}/#queues")).await;
    browser.wait_for("the queue at depth 4", depth, json!("4")).await;
    browser
        .eval(
            "(() => { const b = document.querySelector('#queues tr[data-queue=\"/queue/ui-jobs\"] button.purge'); \
             b.click(); b.click(); return true; })()",
        )
        .await;
    browser.wait_for("the queue purged", &format!("['0', 'none'].includes({depth})"), json!(true)).await;

    // The publish form reaches a STOMP subscriber, headers and all.
    sender.subscribe("/topic/ui-board", "board", &[]).await;
    browser.navigate(&format!("{admin}/#publish")).await;
    browser
        .eval(
            "(() => { document.getElementById('publish-destination').value = '/topic/ui-board'; \
             document.getElementById('publish-headers').value = 'x-from: the admin UI\\n'; \
             document.getElementById('publish-body').value = 'hello from the UI'; \
             document.getElementById('publish-form').requestSubmit(); return true; })()",
        )
        .await;
    let message = sender.recv_message().await;
    assert_eq!((header(&message, "x-from"), body(&message).as_str()), ("the admin UI", "hello from the UI"));
    browser
        .wait_for(
            "the publish result",
            "document.getElementById('publish-result').textContent.startsWith('Published to /topic/ui-board')",
            json!(true),
        )
        .await;

    assert_eq!(browser.exceptions().await, Vec::<String>::new(), "the page threw");
}

/// The UI's three files come without the token, with their types and `Cache-Control: no-cache`;
/// the API beside them still needs it.
#[tokio::test]
async fn the_ui_files_need_no_token_and_the_api_does() {
    let cluster = Cluster::memory(&["--admin-token", ADMIN_TOKEN]).await;
    let admin = cluster.node(0).admin_addr();
    for (path, content_type, needle) in [
        ("/", "text/html; charset=utf-8", "<script src=\"/ui/app.js\""),
        ("/ui/app.js", "text/javascript; charset=utf-8", "/api/v1/overview"),
        ("/ui/app.css", "text/css; charset=utf-8", "prefers-color-scheme"),
    ] {
        let response = stampede_testkit::http::get(admin, path).await.expect("the admin port answers");
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        assert_eq!(response.header("content-type"), Some(content_type), "{path}");
        assert_eq!(response.header("cache-control"), Some("no-cache"), "{path}");
        assert!(response.header("content-security-policy").is_some_and(|p| p.contains("connect-src 'self'")));
        assert!(response.body.contains(needle), "{path} lacks {needle}");
    }
    assert_eq!(stampede_testkit::http::get(admin, "/api/v1/overview").await.unwrap().status, 401);
}

/// With no admin token configured, the page never asks for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_page_asks_for_none() {
    let cluster = Cluster::memory(&[]).await;
    let node = cluster.node(0);
    let browser = Chromium::launch().await;
    browser.navigate(&format!("{}/", node.admin_url())).await;
    let row = format!(
        "document.querySelector('#nodes tr[data-node-id=\"' + CSS.escape({}) + '\"]')",
        js(node.id())
    );
    browser
        .wait_for(
            "the node list, and no token form",
            &format!("[{row} !== null, document.getElementById('auth').hidden]"),
            json!([true, true]),
        )
        .await;
    assert_eq!(browser.exceptions().await, Vec::<String>::new(), "the page threw");
}

/// Rewrites `docs/admin-ui.png`: three nodes on Redis with a few users' sessions, topics and
/// queues, and traffic for a minute so the rate sparklines have a shape. Run it with
/// `cargo test -p stampede --test admin_ui -- --ignored regenerate_the_screenshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites docs/admin-ui.png; run by hand"]
async fn regenerate_the_screenshot() {
    let keys = Keys::new();
    let users_file = keys.users_file.display().to_string();
    let redis = Redis::start().await;
    let cluster = Cluster::start(
        3,
        &redis,
        &[
            "--admin-token",
            ADMIN_TOKEN,
            "--users-file",
            &users_file,
            "--acl-default",
            "allow",
            "--presence",
            "/topic/chat.*",
        ],
    )
    .await;
    let login = |user: &'static str, node: usize| {
        let endpoint = cluster.node(node).endpoint(if node == 1 { Transport::Ws } else { Transport::Tcp });
        async move {
            let mut client = Client::open(&endpoint).await.expect("open");
            let password = format!("{user}-pw");
            client
                .connect(Some("1.2"), &[("login", user), ("passcode", &password), ("heart-beat", "0,0")])
                .await;
            client
        }
    };
    let mut clients = Vec::new();
    for (i, user) in ["ann", "bob", "ops", "witness", "ann", "bob", "ops"].into_iter().enumerate() {
        let mut client = login(user, i % 3).await;
        client.subscribe("/topic/prices", "prices", &[]).await;
        if i % 2 == 0 {
            client.subscribe("/topic/chat.lobby", "chat", &[]).await;
        }
        clients.push(client);
    }
    let mut worker = login("ops", 2).await;
    worker
        .subscribe("/queue/orders", "orders", &[("ack", "client-individual"), ("prefetch-count", "4")])
        .await;
    // One publisher a node, each at its own pace.
    let mut publishers = [login("ops", 0).await, login("ann", 1).await, login("bob", 2).await];
    for i in 0..42 {
        publishers[0].send("/queue/reports", &format!("report {i}"), &[]).await;
    }
    for i in 0..7 {
        publishers[1].send("/queue/emails", &format!("email {i}"), &[]).await;
    }
    for i in 0..4 {
        publishers[2].send("/queue/orders", &format!("order {i}"), &[]).await;
    }

    let browser = Chromium::launch().await;
    let admin = cluster.node(0).admin_url();
    browser.navigate(&format!("{admin}/#cluster&token={ADMIN_TOKEN}")).await;
    // A minute of traffic whose rate rises and falls, while the page samples it.
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < Duration::from_secs(70) {
        tick.tick().await;
        let phase = start.elapsed().as_secs_f64() / 9.0;
        for (k, publisher) in publishers.iter_mut().enumerate() {
            let shift = k as f64 * 1.3;
            let scale = [3.0, 1.5, 0.7][k];
            let burst =
                (scale * (2.0 + 1.6 * (phase + shift).sin() + 0.7 * (phase * 2.7).cos())).max(0.0) as usize;
            for n in 0..burst {
                publisher.send("/topic/prices", &format!("{{\"tick\":{n}}}"), &[]).await;
            }
        }
        for client in clients.iter_mut().chain(publishers.iter_mut()) {
            while client.try_recv_message(Duration::from_millis(1)).await.is_ok() {}
        }
    }
    browser
        .wait_for(
            "three nodes and their rates",
            "document.querySelectorAll('#nodes tr[data-node-id]').length",
            json!(3),
        )
        .await;
    let png = browser.screenshot().await;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-ui.png");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    println!("wrote {}", path.display());

    // The other pages, for a look (not checked in): target/admin-ui/<page>.png.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/admin-ui");
    std::fs::create_dir_all(&dir).unwrap();
    for (page, rows) in [("destinations", "#destinations"), ("queues", "#queues"), ("sessions", "#sessions")]
    {
        browser.navigate(&format!("{admin}/#{page}")).await;
        let filled = format!("document.querySelectorAll('{rows} tbody tr[data-key]').length > 0");
        browser.wait_for(&format!("the {page} page filled"), &filled, json!(true)).await;
        std::fs::write(dir.join(format!("{page}.png")), browser.screenshot().await).unwrap();
    }
    // The members of a destination with presence, a click away on the Destinations page.
    browser.navigate(&format!("{admin}/#destinations")).await;
    browser
        .eval("document.querySelector('#destinations tr[data-destination=\"/topic/chat.lobby\"]').click()")
        .await;
    let members = "document.querySelectorAll('#presence-members tr[data-session]').length";
    browser.wait_for("the lobby's four members", members, json!(4)).await;
    std::fs::write(dir.join("presence.png"), browser.screenshot().await).unwrap();

    browser.color_scheme("dark").await;
    for page in ["sessions", "cluster"] {
        browser.navigate(&format!("{admin}/#{page}")).await;
        browser
            .wait_for(
                "the page filled",
                "document.querySelectorAll('tbody tr[data-key]').length > 0",
                json!(true),
            )
            .await;
        std::fs::write(dir.join(format!("{page}-dark.png")), browser.screenshot().await).unwrap();
    }
    println!("wrote the other pages, and two in dark colours, into {}", dir.display());
}

/// `text` as a JavaScript string literal.
fn js(text: &str) -> String {
    Value::from(text).to_string()
}

// === impl Chromium ===

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A headless Chromium with one page, attached over CDP. Killed, and its profile removed, when
/// dropped; a failing test prints what it wrote to stderr and what the page threw.
struct Chromium {
    process: tokio::process::Child,
    profile: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    cdp: Mutex<Cdp>,
}

/// The DevTools connection: the browser-level WebSocket, the page's session on it.
struct Cdp {
    socket: Socket,
    next_id: u64,
    session: Option<String>,
    /// What the page threw (`Runtime.exceptionThrown`) or logged as an error.
    exceptions: Vec<String>,
}

impl Chromium {
    /// Starts Chromium (installing Debian's package if it is missing) on a fresh profile, opens a
    /// page of [`WIDTH`]×[`HEIGHT`] and attaches to it.
    async fn launch() -> Chromium {
        let chromium = system::require("chromium", "chromium");
        let profile = std::env::temp_dir().join(format!("stampede-admin-ui-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut process = tokio::process::Command::new(chromium)
            .args(system::CHROMIUM_HEADLESS)
            .args(["--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"])
            .arg(format!("--window-size={WIDTH},{HEIGHT}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut lines = BufReader::new(process.stderr.take().expect("piped stderr")).lines();
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let log = stderr.clone();
        // Reads stderr to its end (a full pipe would stall the browser), handing over the
        // DevTools address when it is announced.
        tokio::spawn(async move {
            let mut address_tx = Some(address_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = address_tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
                log.lock().unwrap().push(line);
            }
        });
        let address = match tokio::time::timeout(Duration::from_secs(30), address_rx).await {
            Ok(Ok(address)) => address,
            _ => panic!(
                "chromium did not announce its DevTools address:\n{}",
                stderr.lock().unwrap().join("\n")
            ),
        };
        let (socket, _) =
            tokio_tungstenite::connect_async(address.as_str()).await.expect("the DevTools socket");
        let browser = Chromium {
            process,
            profile,
            stderr,
            cdp: Mutex::new(Cdp { socket, next_id: 1, session: None, exceptions: Vec::new() }),
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"})).await;
        let attached = browser
            .call("Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}))
            .await;
        let session = attached["sessionId"].as_str().expect("a session id").to_owned();
        browser.cdp.lock().await.session = Some(session);
        browser.call("Runtime.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser.color_scheme("light").await;
        browser
    }

    /// Makes the page see `prefers-color-scheme: <scheme>` (`light` or `dark`).
    async fn color_scheme(&self, scheme: &str) {
        let features = json!([{"name": "prefers-color-scheme", "value": scheme}]);
        self.call("Emulation.setEmulatedMedia", json!({ "features": features })).await;
    }

    /// One CDP command (on the page once attached); its result. Events that arrive meanwhile are
    /// dropped, but for the page's exceptions and console errors, which are kept.
    async fn call(&self, method: &str, params: Value) -> Value {
        let mut cdp = self.cdp.lock().await;
        let id = cdp.next_id;
        cdp.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &cdp.session {
            command["sessionId"] = json!(session);
        }
        cdp.socket.send(Message::text(command.to_string())).await.expect("a CDP command is sent");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = match tokio::time::timeout_at(deadline, cdp.socket.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(other) => panic!("the DevTools socket failed during {method}: {other:?}"),
                Err(_) => panic!("no answer to {method} within 30 s"),
            };
            let Message::Text(text) = message else { continue };
            let value: Value = serde_json::from_str(text.as_str()).expect("CDP speaks JSON");
            if value["id"] == json!(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            match value["method"].as_str() {
                Some("Runtime.exceptionThrown") => {
                    let details = &value["params"]["exceptionDetails"];
                    let description = details["exception"]["description"].as_str().unwrap_or_default();
                    cdp.exceptions.push(format!("{} {description}", details["text"]));
                }
                Some("Runtime.consoleAPICalled") if value["params"]["type"] == "error" => {
                    cdp.exceptions.push(format!("console.error {}", value["params"]["args"]));
                }
                _ => {}
            }
        }
    }

    /// Goes to `url` of the admin UI and waits until the page has loaded (its script has run:
    /// it is deferred, so it ran before the load ended).
    async fn navigate(&self, url: &str) {
        let answer = self.call("Page.navigate", json!({"url": url})).await;
        assert!(answer.get("errorText").is_none(), "navigating to {url}: {answer}");
        let loaded = "document.readyState === 'complete' && document.getElementById('nav') !== null";
        self.wait_for(&format!("{url} loaded"), loaded, json!(true)).await;
    }

    /// The value of a JavaScript expression in the page (awaited if it is a promise); panics
    /// if it throws.
    async fn eval(&self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        answer["result"].get("value").cloned().unwrap_or(Value::Null)
    }

    /// Polls `expression` until it equals `expected`; panics naming `what` and the last value
    /// after [`PATIENCE`].
    async fn wait_for(&self, what: &str, expression: &str, expected: Value) -> Value {
        eventually_eq(PATIENCE, what, expected, || self.eval(expression)).await
    }

    /// What the page threw or logged as an error so far.
    async fn exceptions(&self) -> Vec<String> {
        self.cdp.lock().await.exceptions.clone()
    }

    /// A PNG of the viewport.
    async fn screenshot(&self) -> Vec<u8> {
        let answer = self.call("Page.captureScreenshot", json!({"format": "png"})).await;
        let data = answer["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD.decode(data).expect("base64 PNG")
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The last lines, without the noise of a machine without D-Bus.
            let stderr = self
                .stderr
                .lock()
                .map(|lines| {
                    let useful: Vec<&str> =
                        lines.iter().map(String::as_str).filter(|l| !l.contains("dbus")).collect();
                    useful[useful.len().saturating_sub(40)..].join("\n")
                })
                .unwrap_or_default();
            let thrown = self.cdp.try_lock().map(|cdp| cdp.exceptions.join("\n")).unwrap_or_default();
            eprintln!("===== chromium stderr =====\n{stderr}\n===== the page threw =====\n{thrown}\n=====");
        }
        let _ = self.process.start_kill();
        // The profile can go once the browser and its helper processes have exited: they write
        // there until then.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.process.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        loop {
            let _ = std::fs::remove_dir_all(&self.profile);
            if !self.profile.exists() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
