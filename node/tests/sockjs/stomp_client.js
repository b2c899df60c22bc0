// STOMP over SockJS with Debian's sockjs-client (node-sockjs-client), forced onto one transport.
// Usage: node stomp_client.js <sockjs-url> <transport> <topic> [self]
// Speaks STOMP 1.2 by hand (a dozen lines, no STOMP library): CONNECT with heart-beats 200,200,
// SUBSCRIBE to <topic> with a receipt, SEND a message to it (its own copy must come back), then
// wait for a message the test sends from another client, count the server's heart-beats for a
// second, DISCONNECT with a receipt. Prints one JSON object per line on stdout for the test to
// follow: {"event": "echoed"} when its own message came back, then {"event": "done", ...}.
// With `self`, it sends that second message itself (no other client needed).
'use strict';
const SockJS = require('sockjs-client');

const [url, transport, topic, self] = process.argv.slice(2);
const BODY = 'h\u00e9llo \u2603 \u2028 "quoted" \\ end';
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (why) => { out({ event: 'failed', why }); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

const sock = new SockJS(url, null, { transports: [transport] });
let buffer = '';
let heartbeats = 0;
let counting = false;
let beat = null;
const result = { event: 'done', transport: null, messages: [] };
const frame = (command, headers, body) =>
  command + '\n' + Object.entries(headers).map(([k, v]) => k + ':' + v).join('\n') + '\n\n' + (body || '') + '\0';

sock.onopen = () => {
  result.transport = sock.transport;
  sock.send(frame('CONNECT', { 'accept-version': '1.2', host: 'localhost', 'heart-beat': '200,200' }));
};
sock.onclose = (e) => {
  clearInterval(beat);
  result.close = { code: e.code, reason: e.reason };
  if (result.disconnected) { out(result); process.exit(0); }
  fail('closed early: ' + e.code + ' ' + e.reason);
};
sock.onmessage = (e) => {
  buffer += e.data;
  for (;;) {
    // Heart-beats: EOLs between frames.
    const stripped = buffer.replace(/^(\r?\n)+/, (eols) => { if (counting) heartbeats += eols.split('\n').length - 1; return ''; });
    buffer = stripped;
    const end = buffer.indexOf('\0');
    if (end < 0) return;
    const text = buffer.slice(0, end);
    buffer = buffer.slice(end + 1);
    const [head, ...rest] = text.split('\n\n');
    const [command, ...lines] = head.split('\n');
    const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]));
    on(command, headers, rest.join('\n\n'));
  }
};

function on(command, headers, body) {
  if (command === 'CONNECTED') {
    result.version = headers.version;
    result.session = headers.session;
    result.heartBeat = headers['heart-beat'];
    beat = setInterval(() => sock.send('\n'), 150);
    sock.send(frame('SUBSCRIBE', { id: 'sub-0', destination: topic, receipt: 'subscribed' }));
  } else if (command === 'RECEIPT' && headers['receipt-id'] === 'subscribed') {
    sock.send(frame('SEND', { destination: topic, 'content-type': 'text/plain' }, BODY));
  } else if (command === 'MESSAGE') {
    result.messages.push(body);
    if (result.messages.length === 1) {
      if (body !== BODY) fail('own message came back as ' + JSON.stringify(body));
      out({ event: 'echoed' });
      if (self === 'self') sock.send(frame('SEND', { destination: topic }, 'from the other side'));
    } else {
      counting = true;
      setTimeout(() => {
        result.heartbeats = heartbeats;
        sock.send(frame('DISCONNECT', { receipt: 'bye' }));
      }, 1000);
    }
  } else if (command === 'RECEIPT' && headers['receipt-id'] === 'bye') {
    result.disconnected = true;
    sock.close();
  } else if (command === 'ERROR') {
    fail('ERROR ' + headers.message);
  }
}
