//! Questions to every node ([`Engine::call_all`](crate::engine::Engine::call_all)) over pub/sub.
//!
//! Every node subscribes, from its first connection on, to `P:calls` (questions for all) and
//! `P:calls:<node-id>` (answers for it). A caller PUBLISHes a [`Wire`] question on `P:calls`; each
//! node's delivering task hands it to the inbox ([`crate::engine::Inbox::answer`], locks only) and
//! PUBLISHes the answer on the caller's channel. The caller waits for every node the registry
//! lists as live (and itself) for at most [`CALL_TIMEOUT`], and reports the ones that did not
//! answer. Nothing is stored: a node that dies mid-call is simply missing from the answers.
//!
//! Messages for one session ([`Engine::tell`](crate::engine::Engine::tell)) travel the same way
//! without an answer: one PUBLISH on `P:to:<tag>`, the channel of the node whose session ids
//! start with `tag`, which hands it to its inbox.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{registry, Inner};
use crate::engine::{Answers, EngineError};

/// How long a caller waits for the nodes' answers.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A question or an answer on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The asking node (questions) or the answering one (answers).
    node: String,
    call: u64,
    /// The question or answer itself, as the hub wrote it (JSON text).
    body: String,
}

/// Where a call's answers go: (answering node, answer).
type AnswerSender = mpsc::UnboundedSender<(String, Vec<u8>)>;

/// Calls waiting for answers, by call number.
#[derive(Default)]
pub(super) struct Calls {
    next: AtomicU64,
    waiting: std::sync::Mutex<std::collections::HashMap<u64, AnswerSender>>,
}

/// The channels a node subscribes to for calls: questions for all, answers for it, and messages
/// for its sessions.
pub(super) fn channels(inner: &Inner) -> [String; 3] {
    [
        inner.keys.calls(),
        inner.keys.answers(&inner.config.node_id),
        inner.keys.to_sessions(&inner.session_tag),
    ]
}

/// A message of one of [`channels`]; false when the channel is not one of them.
pub(super) fn on_message(inner: &Arc<Inner>, channel: &str, payload: &[u8]) -> bool {
    if channel == inner.keys.calls() {
        if let Ok(question) = serde_json::from_slice::<Wire>(payload) {
            answer(inner, question);
        }
        true
    } else if channel == inner.keys.answers(&inner.config.node_id) {
        if let Ok(answer) = serde_json::from_slice::<Wire>(payload) {
            let waiting = inner.calls.waiting.lock().expect("calls lock");
            if let Some(tx) = waiting.get(&answer.call) {
                let _ = tx.send((answer.node, answer.body.into_bytes()));
            }
        }
        true
    } else if channel == inner.keys.to_sessions(&inner.session_tag) {
        if let Some(inbox) = inner.inbox() {
            inbox.to_session(payload);
        }
        true
    } else {
        false
    }
}

/// Sends a message for one session to the node whose session tag is `tag`.
pub(super) async fn tell(inner: &Inner, tag: &str, order: Vec<u8>) -> Result<(), EngineError> {
    inner.check_connected()?;
    let channel = inner.keys.to_sessions(tag);
    inner
        .command(
            inner.publish_command(),
            &channel,
            vec![Value::from(channel.as_str()), Value::Bytes(order.into())],
        )
        .await?;
    Ok(())
}

/// Answers a question (on the delivering task: the inbox only takes locks) and sends the
/// answer from a task of its own.
fn answer(inner: &Arc<Inner>, question: Wire) {
    let Some(inbox) = inner.inbox() else { return };
    let body = inbox.answer(question.body.as_bytes(), &inner.config.node_id);
    let wire = Wire {
        node: inner.config.node_id.clone(),
        call: question.call,
        body: String::from_utf8(body).unwrap_or_default(),
    };
    let channel = inner.keys.answers(&question.node);
    let inner = inner.clone();
    tokio::spawn(async move {
        let payload = serde_json::to_vec(&wire).expect("answers serialize");
        let args = vec![Value::from(channel.as_str()), Value::Bytes(payload.into())];
        if let Err(error) = inner.command(inner.publish_command(), &channel, args).await {
            tracing::debug!(%error, "could not send an answer to a call");
        }
    });
}

/// Asks every live node and gathers the answers.
pub(super) async fn call_all(inner: &Inner, request: Vec<u8>) -> Result<Answers, EngineError> {
    inner.check_connected()?;
    let mut expected = registry::live_ids(inner).await?;
    if !expected.contains(&inner.config.node_id) {
        expected.push(inner.config.node_id.clone());
    }
    let call = inner.calls.next.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::unbounded_channel();
    inner.calls.waiting.lock().expect("calls lock").insert(call, tx);
    let _forget = Forget(inner, call);
    let wire = Wire {
        node: inner.config.node_id.clone(),
        call,
        body: String::from_utf8(request)
            .map_err(|_| EngineError::Unavailable("a call must be UTF-8 text".to_owned()))?,
    };
    let channel = inner.keys.calls();
    let payload = serde_json::to_vec(&wire).expect("calls serialize");
    inner
        .command(
            inner.publish_command(),
            &channel,
            vec![Value::from(channel.as_str()), Value::Bytes(payload.into())],
        )
        .await?;
    let mut answers = Answers::default();
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    let answered = |answers: &Answers| expected.iter().all(|e| answers.replies.iter().any(|(n, _)| n == e));
    while !answered(&answers) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((node, reply))) => {
                if !answers.replies.iter().any(|(n, _)| *n == node) {
                    answers.replies.push((node, reply));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    answers.missing =
        expected.into_iter().filter(|node| !answers.replies.iter().any(|(n, _)| n == node)).collect();
    Ok(answers)
}

/// Stops routing answers to a call once its caller is done with it.
struct Forget<'a>(&'a Inner, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.calls.waiting.lock().expect("calls lock").remove(&self.1);
    }
}
