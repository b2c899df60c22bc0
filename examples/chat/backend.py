#!/usr/bin/env python3
"""The chat application's backend: the `@MessageMapping("/chat")` handler of the Spring chat
example, as a STOMP worker of Stampede's application destinations (docs/applications.md).

Browsers SEND `{"text": "..."}` to `/app/chat`. Stampede keeps those messages in the application
queue `/app/chat` and stamps each with the sender's session, node and user (headers a client
cannot forge). Every replica of this backend SUBSCRIBEs to `/app/chat` with the `backend` role
(passcode = the node's `app-backend-secret`), so the replicas share the work as competing
consumers. For each message a replica either broadcasts
`{"id", "from", "text", "at"}` to `/topic/messages` (Spring's `@SendTo`), or, when the message is
invalid, answers only the session that sent it on `/user/queue/errors` (Spring's `@SendToUser`,
through the `x-stampede-session` header).

Exactly once, even when a replica is killed: the answer (SEND) and the ACK of the message go in
one STOMP transaction, and the replica waits for the RECEIPT of its COMMIT before it takes the
next message. A replica that dies before its COMMIT reached the node leaves nothing published and
the message unacknowledged, so the node hands it to another replica; once the COMMIT is in, both
the answer and the ACK are.

Needs Python 3.8+ and stomp.py 9.0.0 (`pip install stomp.py==9.0.0`). Settings, as flags or
environment variables (flags win):

    --stomp HOST:PORT[,HOST:PORT...]  CHAT_STOMP     nodes to connect to, tried in turn
                                                      (default 127.0.0.1:61613)
    --login NAME                      CHAT_LOGIN     login of the backend (default chat-backend)
    --prefetch N                      CHAT_PREFETCH  unacknowledged messages a replica holds
                                                      (default 10)
    --name NAME                       CHAT_NAME      this replica's name in its log lines
                                                      (default: host name and process id)
    STAMPEDE_APP_BACKEND_SECRET       the passcode: the node's `app-backend-secret` (required)

It reconnects (after 0.5 s, doubling to 5 s) whenever the node goes away, logs one line per
message, and ends on SIGTERM or SIGINT after finishing the message in hand.
"""

import argparse
import datetime
import itertools
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time

import stomp

APP_DESTINATION = "/app/chat"
BROADCAST = "/topic/messages"
ERRORS = "/user/queue/errors"
MAX_TEXT = 500
# Patience for CONNECTED and for the RECEIPT of a COMMIT: past it the connection is dropped and
# made again, so no message waits behind a node that stopped answering.
ANSWER_WITHIN = 10.0
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 5.0

log = logging.getLogger("chat-backend")


def settings():
    env = os.environ.get
    parser = argparse.ArgumentParser(description="The chat application's backend (STOMP worker of /app/chat).")
    parser.add_argument("--stomp", default=env("CHAT_STOMP", "127.0.0.1:61613"),
                        help="HOST:PORT[,HOST:PORT...] of the nodes (env CHAT_STOMP)")
    parser.add_argument("--login", default=env("CHAT_LOGIN", "chat-backend"), help="login (env CHAT_LOGIN)")
    parser.add_argument("--prefetch", type=int, default=env("CHAT_PREFETCH", "10"),
                        help="unacknowledged messages held at once (env CHAT_PREFETCH)")
    parser.add_argument("--name", default=env("CHAT_NAME", f"{socket.gethostname()}-{os.getpid()}"),
                        help="this replica's name in the log (env CHAT_NAME)")
    args = parser.parse_args()
    args.secret = env("STAMPEDE_APP_BACKEND_SECRET", "")
    if not args.secret:
        parser.error("STAMPEDE_APP_BACKEND_SECRET is not set: it must hold the node's app-backend-secret")
    if args.prefetch < 1:
        parser.error("--prefetch must be at least 1")
    try:
        args.nodes = [(host, int(port)) for host, port in
                      (item.strip().rsplit(":", 1) for item in args.stomp.split(",") if item.strip())]
    except ValueError:
        parser.error(f"--stomp {args.stomp!r}: expected HOST:PORT[,HOST:PORT...]")
    return args


def handle(body):
    """What the handler makes of a message body: (text, None) for a valid chat message, or
    (None, why) for the sender."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, 'invalid message: the body must be JSON such as {"text": "hello"}'
    text = message.get("text") if isinstance(message, dict) else None
    if not isinstance(text, str):
        return None, 'invalid message: the body must be JSON such as {"text": "hello"}'
    if not text.strip():
        return None, "invalid message: the text is empty"
    if len(text) > MAX_TEXT:
        return None, f"invalid message: the text is longer than {MAX_TEXT} characters ({len(text)})"
    return text, None


def now_iso():
    at = datetime.datetime.now(datetime.timezone.utc)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Link(stomp.ConnectionListener):
    """One connection's events, handed from stomp.py's receiver thread to the main thread:
    messages through a queue, CONNECTED, receipts and the end of the connection through a
    condition."""

    def __init__(self):
        self.messages = queue.Queue()
        self.cond = threading.Condition()
        self.connected = False
        self.gone = None
        self.receipts = set()

    def on_connected(self, frame):
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.gone = f"ERROR {frame.headers.get('message', '')}"
            self.cond.notify_all()

    def on_disconnected(self):
        with self.cond:
            self.gone = self.gone or "connection closed"
            self.cond.notify_all()

    def wait(self, what, ready):
        """Waits until `ready()` holds (under the condition); raises ConnectionError when the
        connection ends or ANSWER_WITHIN passes first."""
        deadline = time.monotonic() + ANSWER_WITHIN
        with self.cond:
            while not ready():
                if self.gone:
                    raise ConnectionError(f"{self.gone} while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionError(f"no {what} within {ANSWER_WITHIN:.0f} s")
                self.cond.wait(left)

    def is_gone(self):
        with self.cond:
            return self.gone is not None


class Backend:
    def __init__(self, args):
        self.args = args
        self.stopping = threading.Event()
        self.receipts = itertools.count(1)

    def run(self):
        delay = RECONNECT_FIRST
        while not self.stopping.is_set():
            link = Link()
            conn = stomp.Connection12(self.args.nodes, heartbeats=(10000, 10000), reconnect_attempts_max=1,
                                      auto_decode=False)
            conn.set_listener("chat", link)
            try:
                self.connect(conn, link)
                delay = RECONNECT_FIRST
                self.serve(conn, link)
            except stomp.exception.ConnectFailedException:
                log.warning("%s: no node answers at %s; trying again in %.1f s", self.args.name,
                            self.args.stomp, delay)
            except Exception as e:  # noqa: BLE001 - whatever broke this connection, make another
                log.warning("%s: connection lost (%s: %s); reconnecting in %.1f s", self.args.name,
                            type(e).__name__, e, delay)
            finally:
                self.close(conn, link)
            if self.stopping.wait(delay):
                break
            delay = min(delay * 2, RECONNECT_MAX)
        log.info("%s: stopped", self.args.name)

    def connect(self, conn, link):
        conn.connect(self.args.login, self.args.secret, with_connect_command=True)
        # stomp.py writes each frame on its own (BEGIN, SEND, ACK, COMMIT): without TCP_NODELAY,
        # Nagle's algorithm holds each for the node's delayed ACK, some 40 ms a message.
        if conn.transport.socket is not None:
            conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.wait("CONNECTED", lambda: link.connected)
        # A subscription to an application destination is refused unless the secret gave this
        # session the backend role: its RECEIPT is the proof.
        receipt = f"subscribe-{next(self.receipts)}"
        conn.subscribe(APP_DESTINATION, id="chat", ack="client-individual",
                       headers={"prefetch-count": str(self.args.prefetch), "receipt": receipt})
        link.wait(f"RECEIPT {receipt}", lambda: receipt in link.receipts)
        host, port = conn.transport.current_host_and_port
        log.info("%s: consuming %s on %s:%s (prefetch %d)", self.args.name, APP_DESTINATION, host, port,
                 self.args.prefetch)

    def serve(self, conn, link):
        while not self.stopping.is_set():
            try:
                frame = link.messages.get(timeout=0.5)
            except queue.Empty:
                if link.is_gone():
                    raise ConnectionError(link.gone)
                continue
            self.process(conn, link, frame)

    def process(self, conn, link, frame):
        headers = frame.headers
        # The node's id of the application message: the same in a redelivery (message-id is not).
        message_id = headers.get("x-stampede-message-id") or headers.get("message-id", "")
        session = headers.get("x-stampede-session", "")
        user = headers.get("x-stampede-user") or "anonymous"
        text, error = handle(frame.body or b"")
        transaction = conn.begin()
        if error is None:
            chat = {"id": message_id, "from": user, "text": text, "at": now_iso()}
            conn.send(BROADCAST, json.dumps(chat), content_type="application/json",
                      headers={"transaction": transaction})
            outcome = "broadcast"
        elif session:
            conn.send(ERRORS, error, content_type="text/plain",
                      headers={"transaction": transaction, "x-stampede-session": session})
            outcome = f"error to the sender: {error}"
        else:
            outcome = f"dropped (no sender session): {error}"
        conn.ack(headers.get("ack") or message_id, transaction=transaction)
        receipt = f"commit-{next(self.receipts)}"
        conn.commit(transaction, headers={"receipt": receipt})
        link.wait(f"RECEIPT {receipt}", lambda: receipt in link.receipts)
        with link.cond:
            link.receipts.discard(receipt)
        redelivered = " (redelivered)" if headers.get("redelivered") == "true" else ""
        log.info("%s: handled %s%s from %s session %s node %s: %s", self.args.name, message_id, redelivered,
                 user, session, headers.get("x-stampede-node", "?"), outcome)

    def close(self, conn, link):
        """DISCONNECT (the node hands the messages this replica holds to the others at once),
        then the socket is closed, whether the node answered or not."""
        try:
            if conn.is_connected():
                # stomp.py closes the socket when the DISCONNECT's RECEIPT comes.
                conn.disconnect()
                with link.cond:
                    link.cond.wait_for(lambda: link.gone is not None, timeout=2.0)
        except (OSError, stomp.exception.StompException):
            pass
        conn.transport.disconnect_socket()


def main():
    args = settings()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    # Quiet stomp.py's own per-connection lines; the backend logs what matters.
    logging.getLogger("stomp.py").setLevel(logging.ERROR)
    backend = Backend(args)

    def stop(signum, _frame):
        log.info("%s: %s: finishing the message in hand", args.name, signal.Signals(signum).name)
        backend.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    backend.run()


if __name__ == "__main__":
    main()
