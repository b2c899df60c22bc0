"""Interop check: stomp.py (a third-party client) against a running Stampede node.

Usage: stomp_py_client.py HOST WS_PORT TCP_PORT
Runs the same checks over stomp.py's WebSocket transport (WSStompConnection at /ws) and its
plain TCP transport (Connection), and exits non-zero with a message on the first failure.
"""

import sys
import threading
import time
import uuid

import stomp

TIMEOUT = 5.0


class Collector(stomp.ConnectionListener):
    def __init__(self):
        self.messages = []
        self.receipts = []
        self.errors = []
        self.cond = threading.Condition()

    def on_message(self, frame):
        with self.cond:
            self.messages.append(frame)
            self.cond.notify_all()

    def on_receipt(self, frame):
        with self.cond:
            self.receipts.append(frame.headers.get("receipt-id"))
            self.cond.notify_all()

    def on_error(self, frame):
        with self.cond:
            self.errors.append(frame)
            self.cond.notify_all()

    def wait_for(self, what, predicate):
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; have {len(self.messages)} messages, receipts {self.receipts}, errors {[e.headers for e in self.errors]}")
                self.cond.wait(left)


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name} failed {detail}")


def settle(conn, verb, frame, receipt):
    """ACK or NACK as the connection's protocol version wants (1.2: the ack header; 1.1:
    message-id and subscription)."""
    if isinstance(conn, stomp.connect.StompConnection12):
        getattr(conn, verb)(frame.headers["ack"], receipt=receipt)
    else:
        getattr(conn, verb)(frame.headers["message-id"], frame.headers["subscription"], receipt=receipt)


def exercise(label, make):
    tag = uuid.uuid4().hex[:8]
    topic = f"/topic/interop.{tag}"
    queue = f"/queue/interop.{tag}"

    consumer = make()
    c = Collector()
    consumer.set_listener("c", c)
    consumer.connect(login="ann", passcode="x", wait=True)

    producer = make()
    p = Collector()
    producer.set_listener("p", p)
    producer.connect(wait=True)

    # Topic with a receipt on SUBSCRIBE and SEND.
    consumer.subscribe(destination=topic, id="t1", ack="auto", headers={"receipt": "sub-t1"})
    c.wait_for("subscribe receipt", lambda: "sub-t1" in c.receipts)
    producer.send(destination=topic, body="hello", headers={"receipt": "send-1", "x-custom": "kept"})
    p.wait_for("send receipt", lambda: "send-1" in p.receipts)
    c.wait_for("topic message", lambda: len(c.messages) == 1)
    m = c.messages[0]
    check("topic body", m.body == "hello", repr(m.body))
    check("user header passed through", m.headers.get("x-custom") == "kept", m.headers)
    check("subscription header", m.headers.get("subscription") == "t1", m.headers)
    consumer.unsubscribe(id="t1")

    # Queue with client-individual acks: ACK one, NACK one (redelivered), ACK the redelivery.
    consumer.subscribe(destination=queue, id="q1", ack="client-individual", headers={"receipt": "sub-q1"})
    c.wait_for("queue subscribe receipt", lambda: "sub-q1" in c.receipts)
    producer.send(destination=queue, body="first", headers={"receipt": "send-q1"})
    producer.send(destination=queue, body="second", headers={"receipt": "send-q2"})
    p.wait_for("queue send receipts", lambda: {"send-q1", "send-q2"} <= set(p.receipts))
    c.wait_for("two queue messages", lambda: len(c.messages) == 3)
    first, second = c.messages[1], c.messages[2]
    check("queue order", (first.body, second.body) == ("first", "second"), (first.body, second.body))
    settle(consumer, "ack", first, "ack-1")
    settle(consumer, "nack", second, "nack-2")
    c.wait_for("ack/nack receipts", lambda: {"ack-1", "nack-2"} <= set(c.receipts))
    c.wait_for("redelivery", lambda: len(c.messages) == 4)
    again = c.messages[3]
    check("redelivered body", again.body == "second", repr(again.body))
    check("redelivered flag", again.headers.get("redelivered") == "true", again.headers)
    settle(consumer, "ack", again, "ack-3")
    c.wait_for("final ack receipt", lambda: "ack-3" in c.receipts)

    # A transaction: nothing arrives before COMMIT.
    consumer.subscribe(destination=topic, id="t2", headers={"receipt": "sub-t2"})
    c.wait_for("subscribe receipt", lambda: "sub-t2" in c.receipts)
    tx = producer.begin()
    producer.send(destination=topic, body="in-tx", transaction=tx)
    time.sleep(0.2)
    check("transaction holds messages", len(c.messages) == 4, len(c.messages))
    producer.commit(tx)
    c.wait_for("committed message", lambda: len(c.messages) == 5)
    check("committed body", c.messages[4].body == "in-tx")

    check("no errors", not c.errors and not p.errors, [e.headers for e in c.errors + p.errors])
    producer.disconnect()
    consumer.disconnect()
    print(f"{label}: ok")


def main():
    host, ws_port, tcp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    exercise("websocket", lambda: stomp.WSStompConnection([(host, ws_port)], ws_path="/ws", heartbeats=(1000, 1000)))
    exercise("tcp (STOMP 1.1)", lambda: stomp.Connection([(host, tcp_port)], heartbeats=(1000, 1000)))
    exercise("tcp (STOMP 1.2)", lambda: stomp.Connection12([(host, tcp_port)], heartbeats=(1000, 1000)))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
