// The broker's memory per idle session, SockJS (xhr-streaming) beside plain WebSocket.
// Usage: NODE_PATH=/usr/share/nodejs node idle.js <host:port> <ws|xhr-streaming> <sessions> <broker-pid>
// Opens <sessions> sessions, each CONNECTed (no heart-beats) with one subscription of its own,
// holds them, and prints the broker's RSS before and after, and the difference per session.
// A measurement, not a test: see bench/notes.md ("SockJS sessions at rest").
'use strict';
const fs = require('fs');
const http = require('http');
const WebSocket = require('faye-websocket').Client;

const [addr, kind, count, pid] = process.argv.slice(2);
const n = Number(count);
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
const frames = (i) => [
  'CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0',
  `SUBSCRIBE\nid:0\ndestination:/topic/idle-${kind}-${i}\nreceipt:r\n\n\0`,
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function ws(i) {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(`ws://${addr}/ws`, ['v12.stomp']);
    let seen = '';
    sock.on('open', () => frames(i).forEach((f) => sock.send(f)));
    sock.on('message', (e) => { seen += e.data; if (seen.includes('RECEIPT')) resolve(sock); });
    sock.on('error', reject);
  });
}

function post(path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: addr.split(':')[0], port: addr.split(':')[1], path, method: 'POST', agent }, resolve);
    req.on('error', reject);
    req.end(body);
  });
}

async function xhrStreaming(i) {
  const base = `/ws/000/idle${i}x${process.pid}`;
  const stream = await post(`${base}/xhr_streaming`, '');
  let seen = '';
  const received = new Promise((resolve) => stream.on('data', (d) => { seen += d; if (seen.includes('RECEIPT')) resolve(); }));
  await post(`${base}/xhr_send`, JSON.stringify(frames(i))).then((r) => r.resume());
  await received;
  return stream;
}

(async () => {
  const open = kind === 'ws' ? ws : xhrStreaming;
  await sleep(500);
  const before = rss();
  const held = [];
  for (let i = 0; i < n; i += 100) {
    held.push(...await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, j) => open(i + j))));
  }
  await sleep(2000);
  const after = rss();
  console.log(JSON.stringify({ kind, sessions: n, before, after, perSession: Math.round((after - before) / n) }));
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
