//! The server API (`/api/v1` on the admin port): sessions, users, destinations, presence counts,
//! disconnects, unsubscribes, sending to one session, queues and purge.
//!
//! Every scenario runs on every engine variant (see `every_engine!` in the test kit): on three
//! nodes with Redis, clients are spread over the nodes and every call goes to node 0's admin
//! port, so each answer is the cluster's, gathered through Redis, and each order reaches the node
//! that holds its session. Bad input, the token and the OpenAPI document are the node's own and
//! run on the memory engine; schemathesis (from PyPI) checks the live API against the document.

use std::time::Duration;

use stampede::config::{Config, Secret};
use stampede_testkit::prelude::*;
use stampede_testkit::system;

every_engine!(
    sessions_users_and_destinations_are_listed_cluster_wide,
    disconnect_reaches_the_session_on_its_node,
    unsubscribe_and_send_to_one_session,
    queues_report_depth_consumers_unacked_and_purge,
);

const TOKEN: &str = "admin-secret";

fn with_token(c: &mut Config) {
    c.auth.admin_token = Some(Secret::new(TOKEN));
}

/// A call to node 0's admin API with the token; the answer's status and JSON.
async fn call(cluster: &Cluster, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let response = cluster.node(0).http(method, path, Some(&auth), body).await;
    let json = serde_json::from_str(&response.body).unwrap_or(serde_json::Value::Null);
    (response.status, json)
}

fn strings(value: &serde_json::Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = value
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|v| v[field].as_str().unwrap_or("?").to_owned())
        .collect();
    out.sort();
    out
}

async fn sessions_users_and_destinations_are_listed_cluster_wide(v: Variant) {
    let cluster = Cluster::start(v, with_token).await;
    let mut ann0 = cluster.connect_as(0, "ann").await;
    let mut ann1 = cluster.connect_as(1, "ann").await;
    let mut bob = cluster.connect_as(2, "bob").await;
    let mut anonymous = cluster.connect(1).await;
    ann0.subscribe("/topic/room", "r", &[]).await;
    ann1.subscribe("/topic/room", "r", &[]).await;
    bob.subscribe("/topic/room", "r", &[]).await;
    bob.subscribe("/queue/jobs", "j", &[("ack", "client-individual")]).await;
    anonymous.subscribe("/topic/room", "x", &[]).await;
    ann1.subscribe("/user/queue/replies", "u", &[]).await;

    let (status, page) = call(&cluster, "GET", "/api/v1/sessions", None).await;
    assert_eq!(status, 200, "{page}");
    let sessions = page["sessions"].as_array().expect("sessions").clone();
    assert_eq!(sessions.len(), 4, "{page}");
    assert_eq!(page["missing_nodes"], serde_json::json!([]));
    assert_eq!(page["next_cursor"], serde_json::Value::Null);
    let view = |id: &str| sessions.iter().find(|s| s["session"] == id).cloned().expect("listed");
    let bob_view = view(bob.session());
    assert_eq!(bob_view["user"], "bob");
    assert_eq!(bob_view["node"], cluster.node(2).node_id());
    assert_eq!(bob_view["transport"], if v.transport == Transport::Ws { "ws" } else { "tcp" });
    assert!(bob_view["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{bob_view}");
    assert!(bob_view["connected_ms"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000));
    assert_eq!(
        bob_view["subscriptions"],
        serde_json::json!([
            {"id": "j", "destination": "/queue/jobs", "ack": "client-individual"},
            {"id": "r", "destination": "/topic/room", "ack": "auto"},
        ])
    );
    assert_eq!(view(ann1.session())["subscriptions"][1]["destination"], "/user/ann/queue/replies");
    assert_eq!(view(anonymous.session())["user"], serde_json::Value::Null);

    // Filtered by user, and one session by id.
    let (_, anns) = call(&cluster, "GET", "/api/v1/sessions?user=ann", None).await;
    let mut expected = vec![ann0.session().to_owned(), ann1.session().to_owned()];
    expected.sort();
    assert_eq!(strings(&anns["sessions"], "session"), expected);
    let (status, one) = call(&cluster, "GET", &format!("/api/v1/sessions/{}", bob.session()), None).await;
    assert_eq!((status, &one), (200, &bob_view));

    // Pages of two, in session id order, end to end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/sessions?limit=2".to_owned();
    for _ in 0..3 {
        let (status, page) = call(&cluster, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let ids = strings(&page["sessions"], "session");
        assert!(ids.len() <= 2);
        seen.extend(ids);
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/sessions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut all = strings(&page["sessions"], "session");
    all.sort();
    assert_eq!(seen, all, "pages cover every session once, in order");

    let (_, users) = call(&cluster, "GET", "/api/v1/users", None).await;
    assert_eq!(
        users["users"],
        serde_json::json!([{"user": "ann", "sessions": 2}, {"user": "bob", "sessions": 1}])
    );

    let (_, destinations) = call(&cluster, "GET", "/api/v1/destinations", None).await;
    let room = destinations["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["destination"] == "/topic/room")
        .cloned()
        .expect("/topic/room listed");
    assert_eq!((room["subscribers"].as_u64(), room["users"].as_u64()), (Some(4), Some(2)), "{destinations}");
    let (status, counts) = call(&cluster, "GET", "/api/v1/presence?destination=/topic/room", None).await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!((counts["subscribers"].as_u64(), counts["users"].as_u64()), (Some(4), Some(2)));
    let (_, none) = call(&cluster, "GET", "/api/v1/presence?destination=/topic/empty", None).await;
    assert_eq!((none["subscribers"].as_u64(), none["users"].as_u64()), (Some(0), Some(0)));

    // A session that leaves is no longer listed.
    anonymous.disconnect().await;
    let cluster = &cluster;
    eventually_eq(WAIT, "sessions after a DISCONNECT", 3, || async move {
        call(cluster, "GET", "/api/v1/sessions", None).await.1["sessions"].as_array().map_or(0, Vec::len)
    })
    .await;
}

async fn disconnect_reaches_the_session_on_its_node(v: Variant) {
    let cluster = Cluster::start(v, with_token).await;
    let mut bystander = cluster.connect_as(0, "witness").await;
    bystander.subscribe("/topic/news", "n", &[]).await;
    let mut spammer = cluster.connect_as(1, "spammer").await;
    let mut bob1 = cluster.connect_as(1, "bob").await;
    let mut bob2 = cluster.connect_as(2, "bob").await;

    let path = format!("/api/v1/sessions/{}/disconnect", spammer.session());
    let (status, reply) = call(&cluster, "POST", &path, Some(r#"{"reason":"spamming the room"}"#)).await;
    assert_eq!((status, &reply), (200, &serde_json::json!({"disconnected": 1})));
    let error = spammer.expect_error().await;
    assert_eq!(error.get("message"), Some("spamming the room"));
    spammer.expect_closed(WAIT).await;
    // Gone now: a second order finds nothing.
    let (status, _) = call(&cluster, "POST", &path, None).await;
    assert_eq!(status, 404);

    let (status, reply) = call(&cluster, "POST", "/api/v1/users/bob/disconnect", Some("{}")).await;
    assert_eq!((status, &reply), (200, &serde_json::json!({"disconnected": 2})));
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(bob.expect_error().await.get("message"), Some("disconnected by an operator"));
        bob.expect_closed(WAIT).await;
    }
    let (_, reply) = call(&cluster, "POST", "/api/v1/users/bob/disconnect", None).await;
    assert_eq!(reply, serde_json::json!({"disconnected": 0}));

    // The bystander noticed nothing.
    let mut publisher = cluster.connect(2).await;
    publisher.publish("/topic/news", "still here", &[]).await;
    assert_eq!(body(&bystander.recv_message().await), "still here");
    cluster.settle(2).await;
}

async fn unsubscribe_and_send_to_one_session(v: Variant) {
    let cluster = Cluster::start(v, with_token).await;
    let mut ann = cluster.connect_as(1, "ann").await;
    let mut ann_elsewhere = cluster.connect_as(2, "ann").await;
    for client in [&mut ann, &mut ann_elsewhere] {
        client.subscribe("/user/queue/replies", "u", &[]).await;
        client.subscribe("/topic/room", "r", &[]).await;
    }

    // To one session: only that one of ann's two sessions gets it.
    let request = format!(
        r#"{{"destination":"/user/queue/replies","session":"{}","headers":{{"x-kind":"answer"}},"body":"for you"}}"#,
        ann.session()
    );
    let (status, reply) = call(&cluster, "POST", "/api/v1/publish", Some(&request)).await;
    assert_eq!((status, &reply), (202, &serde_json::json!({"delivered": 1})));
    let message = ann.recv_message().await;
    assert_eq!((body(&message), message.get("x-kind")), ("for you".to_owned(), Some("answer")));
    assert_eq!(message.get("subscription"), Some("u"));
    ann_elsewhere.assert_quiet().await;

    // Unsubscribed by the operator: the topic no longer reaches that session.
    let path = format!("/api/v1/sessions/{}/unsubscribe", ann.session());
    let (status, reply) = call(&cluster, "POST", &path, Some(r#"{"destination":"/topic/room"}"#)).await;
    assert_eq!((status, &reply), (200, &serde_json::json!({"unsubscribed": 1})));
    let ann_id = ann.session().to_owned();
    let cluster_ref = &cluster;
    eventually_eq(WAIT, "ann's subscriptions", 1, || {
        let ann_id = ann_id.clone();
        async move {
            let (_, view) = call(cluster_ref, "GET", &format!("/api/v1/sessions/{ann_id}"), None).await;
            view["subscriptions"].as_array().map_or(0, Vec::len)
        }
    })
    .await;
    let mut publisher = cluster.connect(0).await;
    publisher.publish("/topic/room", "after", &[]).await;
    assert_eq!(body(&ann_elsewhere.recv_message().await), "after");
    ann.assert_quiet().await;
    // Its other subscription lives on, and the session can subscribe to the room again.
    ann.subscribe("/topic/room", "r", &[]).await;
    publisher.publish("/topic/room", "again", &[]).await;
    assert_eq!(body(&ann.recv_message().await), "again");

    // Unknown sessions and destinations without a subscription.
    let (status, _) =
        call(&cluster, "POST", "/api/v1/sessions/nope/unsubscribe", Some(r#"{"destination":"/topic/room"}"#))
            .await;
    assert_eq!(status, 404);
    let (status, reply) = call(&cluster, "POST", &path, Some(r#"{"destination":"/topic/other"}"#)).await;
    assert_eq!((status, &reply), (200, &serde_json::json!({"unsubscribed": 0})));
    let request = r#"{"destination":"/user/queue/replies","session":"nope","body":"x"}"#;
    assert_eq!(call(&cluster, "POST", "/api/v1/publish", Some(request)).await.0, 404);
    ann.assert_quiet().await;
}

async fn queues_report_depth_consumers_unacked_and_purge(v: Variant) {
    let cluster = Cluster::start(v, with_token).await;
    let mut producer = cluster.connect(0).await;
    for i in 0..6 {
        producer.publish("/queue/jobs", &format!("job {i}"), &[]).await;
    }
    let queue = |queues: &serde_json::Value, name: &str| {
        queues["queues"].as_array().and_then(|q| q.iter().find(|q| q["queue"] == name).cloned())
    };
    let (status, queues) = call(&cluster, "GET", "/api/v1/queues", None).await;
    assert_eq!(status, 200, "{queues}");
    let jobs = queue(&queues, "/queue/jobs").expect("listed");
    assert_eq!(
        (jobs["depth"].as_u64(), jobs["consumers"].as_u64(), jobs["unacked"].as_u64()),
        (Some(6), Some(0), Some(0))
    );

    // A consumer on another node holds two, unacknowledged.
    let mut worker = cluster.connect(1).await;
    worker.subscribe("/queue/jobs", "w", &[("ack", "client-individual"), ("prefetch-count", "2")]).await;
    let held = worker.recv_messages(2).await;
    let cluster_ref = &cluster;
    let counts =
        eventually_eq(WAIT, "depth, consumers, unacked", (Some(4), Some(1), Some(2)), || async move {
            let (_, queues) = call(cluster_ref, "GET", "/api/v1/queues", None).await;
            let jobs = queue(&queues, "/queue/jobs").unwrap_or_default();
            (jobs["depth"].as_u64(), jobs["consumers"].as_u64(), jobs["unacked"].as_u64())
        })
        .await;
    assert_eq!(counts, (Some(4), Some(1), Some(2)));

    // Purge drops the ready ones; those in flight stay with their consumer.
    let (status, reply) =
        call(&cluster, "POST", "/api/v1/queues/purge", Some(r#"{"queue":"/queue/jobs"}"#)).await;
    assert_eq!((status, &reply), (200, &serde_json::json!({"purged": 4})));
    assert_eq!(cluster.queue_depth("/queue/jobs").await, 0);
    worker.ack(&held[0]).await;
    // Refused for good: a dead letter.
    worker.request(nack_frame(&held[1]).with_header("requeue", "false")).await;
    eventually_eq(WAIT, "dead letters", Some(1), || async move {
        let (_, queues) = call(cluster_ref, "GET", "/api/v1/queues", None).await;
        queue(&queues, "/queue/jobs").and_then(|q| q["dead_letters"].as_u64())
    })
    .await;
    worker.assert_quiet().await;
    assert_eq!(cluster.metric("stampede_messages_dropped_total{reason=\"purged\"}").await, 4.0);

    let (status, _) =
        call(&cluster, "POST", "/api/v1/queues/purge", Some(r#"{"queue":"/topic/jobs"}"#)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn bad_requests_get_their_4xx_and_change_nothing() {
    let node = TestNode::start(with_token).await;
    let mut client = node.connect_as(Transport::Tcp, "ann").await;
    client.subscribe("/topic/room", "r", &[]).await;
    let auth = format!("Bearer {TOKEN}");
    let session = client.session().to_owned();
    let disconnect = format!("/api/v1/sessions/{session}/disconnect");
    // (method, path, Authorization, body, expected status)
    type Case<'a> = (&'a str, String, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/api/v1/sessions".into(), None, None, 401),
        ("GET", "/api/v1/sessions".into(), Some("Bearer wrong"), None, 401),
        ("POST", disconnect.clone(), None, None, 401),
        ("POST", disconnect.clone(), Some("Bearer wrong"), Some("{}"), 401),
        ("POST", disconnect.clone(), Some(&auth), Some("{not json"), 400),
        ("POST", disconnect.clone(), Some(&auth), Some(r#"{"reason":7}"#), 400),
        ("POST", disconnect.clone(), Some(&auth), Some(r#"{"why":"x"}"#), 400),
        ("POST", "/api/v1/sessions/unknown/disconnect".into(), Some(&auth), None, 404),
        ("GET", "/api/v1/sessions/unknown".into(), Some(&auth), None, 404),
        ("GET", "/api/v1/sessions?limit=100000000".into(), Some(&auth), None, 400),
        ("GET", "/api/v1/sessions?limit=0".into(), Some(&auth), None, 400),
        ("GET", "/api/v1/sessions?limit=-1".into(), Some(&auth), None, 400),
        ("GET", "/api/v1/sessions?colour=red".into(), Some(&auth), None, 400),
        ("GET", "/api/v1/presence".into(), Some(&auth), None, 400),
        ("POST", "/api/v1/publish".into(), Some(&auth), Some("[]"), 400),
        ("POST", "/api/v1/publish".into(), Some(&auth), Some(r#"{"destination":"/nowhere/x"}"#), 400),
        ("POST", "/api/v1/queues/purge".into(), Some(&auth), Some(""), 400),
        ("POST", format!("/api/v1/sessions/{session}/unsubscribe"), Some(&auth), Some("{}"), 400),
    ];
    for (method, path, authorization, body, expected) in cases {
        let response = node.http(method, &path, authorization, body).await;
        assert_eq!(response.status, expected, "{method} {path} {body:?}: {}", response.body);
        let json: serde_json::Value = serde_json::from_str(&response.body).expect("a JSON error");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
    }
    let huge = format!(r#"{{"destination":"/topic/room","body":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    assert_eq!(node.http("POST", "/api/v1/publish", Some(&auth), Some(&huge)).await.status, 413);
    // Nothing changed: the session is connected and subscribed, and nothing reached it.
    let view = node.http("GET", &format!("/api/v1/sessions/{session}"), Some(&auth), None).await;
    assert_eq!(view.status, 200);
    assert_eq!(view.json()["subscriptions"][0]["destination"], "/topic/room");
    client.assert_quiet().await;
    // Every call was logged, the refused ones as such.
    assert!(node.log().text().contains("admin API call refused"), "refusals logged");
    assert!(node.log().text().contains("admin API call"), "calls logged");
    node.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_is_served_without_the_token_and_lists_every_route() {
    let node = TestNode::start(with_token).await;
    let response = node.http("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(response.status, 200);
    let doc = response.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    for path in [
        "/api/v1/overview",
        "/api/v1/nodes",
        "/api/v1/publish",
        "/api/v1/sessions",
        "/api/v1/sessions/{session}",
        "/api/v1/sessions/{session}/disconnect",
        "/api/v1/sessions/{session}/unsubscribe",
        "/api/v1/users",
        "/api/v1/users/{user}/disconnect",
        "/api/v1/destinations",
        "/api/v1/presence",
        "/api/v1/queues",
        "/api/v1/queues/purge",
    ] {
        assert!(paths.iter().any(|p| *p == path), "{path} missing from the OpenAPI document");
    }
    node.shutdown().await;
}

/// schemathesis (PyPI, in a venv of the suite's own) runs every documented operation against a
/// live node with a few clients and checks every answer against the document: status codes,
/// content types, schemas, and no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_api_as_documented() {
    let schemathesis = system::pip_tool("schemathesis", "schemathesis==4.32.5", "schemathesis");
    let node = TestNode::start(with_token).await;
    let mut clients = Vec::new();
    for user in ["ann", "bob", "cy"] {
        let mut client = node.connect_as(Transport::Ws, user).await;
        client.subscribe("/topic/room", "r", &[]).await;
        client.publish("/queue/jobs", "x", &[]).await;
        clients.push(client);
    }
    let url = format!("{}/api/v1/openapi.json", node.admin_url());
    // schemathesis keeps a cache in its working directory: a scratch one, not the source tree.
    let scratch = std::env::temp_dir().join(format!("stampede-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("a scratch directory");
    let output = tokio::process::Command::new(&schemathesis)
        .current_dir(&scratch)
        .args(["run", &url, "--checks", "all", "--max-examples", "30", "--header"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .args(["--exclude-checks", "positive_data_acceptance", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis ran");
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "schemathesis found the API unlike its document:\n{stdout}\n{stderr}");
    node.shutdown().await;
}
