//! The Lua scripts that make multi-step operations atomic, and how they are run.
//!
//! Each script touches the keys of one destination only (one hash tag), so it runs on Redis
//! Cluster too. Scripts are sent with EVALSHA as pipelined custom commands (fred does not
//! pipeline its own EVALSHA) routed by the first key's slot, and re-sent with EVAL when the server
//! answers NOSCRIPT (after a restart or on a cluster node that has not seen it yet).
//!
//! Every script exists in two variants that differ in one word: how it publishes. On Redis
//! Cluster the engine uses sharded pub/sub (SPUBLISH, see `pubsub.rs`), elsewhere classic PUBLISH;
//! [`Script::run`] and [`Script::load`] pick the variant from the client, the pipelined
//! [`Script::evalsha`] is told. A script that publishes is given the channel of its own
//! destination, which on Cluster carries the destination's hash tag: the SPUBLISH lands in the
//! slot of the keys it runs over, so storing and publishing stay one atomic step.

use std::sync::LazyLock;

use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::{ClusterHash, CustomCommand, Value};
use sha1::{Digest, Sha1};

use super::keys::GROUP;

/// One Lua script, in its classic and its sharded variant.
pub(super) struct Script {
    pub name: &'static str,
    classic: Body,
    sharded: Body,
}

/// The text of one variant and its SHA-1.
struct Body {
    lua: String,
    sha: String,
}

impl Body {
    fn new(publish: &str, body: &str) -> Body {
        let lua = format!("local GROUP = '{GROUP}'\nlocal PUBLISH = '{publish}'\n{LIBRARY}\n{body}");
        let sha = hex(&Sha1::digest(lua.as_bytes()));
        Body { lua, sha }
    }
}

impl Script {
    fn new(name: &'static str, body: &str) -> Script {
        Script { name, classic: Body::new("PUBLISH", body), sharded: Body::new("SPUBLISH", body) }
    }

    /// The variant for a client: sharded pub/sub on Redis Cluster.
    fn body(&self, sharded: bool) -> &Body {
        if sharded {
            &self.sharded
        } else {
            &self.classic
        }
    }

    /// Runs the script with `keys` (all in one slot) and `args`.
    pub(super) async fn run(
        &self,
        client: &Client,
        keys: &[&str],
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        let body = self.body(client.is_clustered());
        let (command, all) = self.call("EVALSHA", Value::from(body.sha.as_str()), keys, &args);
        match client.custom::<Value, Value>(command, all).await {
            Err(e) if is_noscript(&e) => {
                tracing::debug!(script = self.name, "loading a script into Redis");
                let (command, all) = self.call("EVAL", Value::from(body.lua.as_str()), keys, &args);
                client.custom::<Value, Value>(command, all).await
            }
            result => result,
        }
    }

    /// Loads the script into Redis (every primary of a Redis Cluster), so that its EVALSHA calls
    /// in a pipeline do not fail. Returns the SHA-1 Redis names it by.
    pub(super) async fn load(&self, client: &Client) -> Result<String, fred::error::Error> {
        if client.is_clustered() {
            client.script_load_cluster(self.sharded.lua.as_str()).await
        } else {
            client.script_load(self.classic.lua.as_str()).await
        }
    }

    #[cfg(test)]
    pub(super) fn sha(&self, sharded: bool) -> &str {
        &self.body(sharded).sha
    }

    /// The EVALSHA of the script's variant (`sharded` on Redis Cluster) with `keys` and `args`,
    /// to send in a pipeline; a reply that [`is_noscript`] means it has to be
    /// [`run`](Script::run) again.
    pub(super) fn evalsha(
        &self,
        sharded: bool,
        keys: &[&str],
        args: &[Value],
    ) -> (CustomCommand, Vec<Value>) {
        self.call("EVALSHA", Value::from(self.body(sharded).sha.as_str()), keys, args)
    }

    fn call(
        &self,
        command: &'static str,
        head: Value,
        keys: &[&str],
        args: &[Value],
    ) -> (CustomCommand, Vec<Value>) {
        let slot = keys.first().map(|k| fred::util::redis_keyslot(k.as_bytes()));
        let hash = slot.map(ClusterHash::Custom).unwrap_or(ClusterHash::Random);
        let mut all = Vec::with_capacity(2 + keys.len() + args.len());
        all.push(head);
        all.push(Value::Integer(keys.len() as i64));
        all.extend(keys.iter().map(|k| Value::from(*k)));
        all.extend(args.iter().cloned());
        (CustomCommand::new_static(command, hash, false), all)
    }
}

/// Redis does not know the script (restarted, failed over, or a cluster node that has not seen it).
pub(super) fn is_noscript(error: &fred::error::Error) -> bool {
    error.details().contains("NOSCRIPT")
}

/// Functions shared by the queue scripts.
///
/// `trim` keeps at most `maxlen` *ready* entries (those after the group's last-delivered id;
/// entries in flight do not count), deleting the oldest ready ones; `push` appends an entry,
/// then trims.
/// `requeue` moves entries this node holds back to the tail: redeliveries + 1 when `delivered`,
/// or leaves them pending and returns them for the dead-letter queue when they reached
/// `maxdel`. An id no longer in the stream (acknowledged, trimmed, reclaimed) is only XACKed.
const LIBRARY: &str = r#"
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function trim(key, maxlen)
  local len = redis.call('XLEN', key)
  if len <= maxlen then return 0 end
  local start, pending = '-', 0
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if ok then
    for _, g in ipairs(groups) do
      if field(g, 'name') == GROUP then
        start = '(' .. field(g, 'last-delivered-id')
        pending = tonumber(field(g, 'pending')) or 0
      end
    end
  end
  local excess = len - pending - maxlen
  if excess <= 0 then return 0 end
  local old = redis.call('XRANGE', key, start, '+', 'COUNT', excess)
  for _, e in ipairs(old) do redis.call('XDEL', key, e[1]) end
  return #old
end

local function push(key, env, r, maxlen)
  redis.call('XADD', key, '*', 'e', env, 'r', r)
  return trim(key, maxlen)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A queue's lifetime: what a SUBSCRIBE declared (fields of its life hash), else the rule's.
local function lifetime(life, rule_expires, rule_auto)
  local d = redis.call('HMGET', life, 'expires', 'auto')
  return tonumber(d[1] or rule_expires) or 0, (d[2] or rule_auto) == '1'
end

-- Deletes a queue: its stream (entries, consumer group), its life hash and its enqueue markers.
-- Returns how many messages went with it.
local function drop_queue(key, life, sent)
  local n = 0
  if redis.call('EXISTS', key) == 1 then n = redis.call('XLEN', key) end
  redis.call('DEL', key, life, sent)
  return n
end

local function requeue(key, ids, delivered, maxdel, maxlen)
  local dropped, moved, dead = 0, 0, {}
  for _, id in ipairs(ids) do
    local found = redis.call('XRANGE', key, id, id)
    if #found == 0 then
      redis.call('XACK', key, GROUP, id)
    else
      local fields = found[1][2]
      local env = field(fields, 'e')
      local r = tonumber(field(fields, 'r')) or 0
      if delivered then r = r + 1 end
      if env == nil then
        redis.call('XACK', key, GROUP, id)
        redis.call('XDEL', key, id)
      elseif maxdel > 0 and r >= maxdel then
        dead[#dead + 1] = id
        dead[#dead + 1] = env
      else
        redis.call('XACK', key, GROUP, id)
        redis.call('XDEL', key, id)
        dropped = dropped + push(key, env, r, maxlen)
        moved = moved + 1
      end
    end
  end
  return dropped, moved, dead
end
"#;

/// KEYS: none, or the channel on Redis Cluster (so that the call goes to the channel's slot).
/// ARGV: channel, then envelopes. PUBLISHes each envelope on the channel, in order: a burst of
/// plain publishes on one channel as one command and one reply (see `publisher`).
/// Returns how many it published.
pub(super) static PUBLISH_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "publish_many",
        r#"
for i = 2, #ARGV do
  redis.call(PUBLISH, ARGV[1], ARGV[i])
end
return #ARGV - 1
"#,
    )
});

/// KEYS: seq, log. ARGV: envelope without offset, size, expire ms (0 = never), channel.
/// Assigns the next offset, completes the envelope with it (bincode varint, see `envelope`),
/// appends it as entry `0-<offset>`, trims to `size`, and publishes it. Returns the offset.
pub(super) static HISTORY_PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "history_publish",
        r#"
local function varint(n)
  if n < 251 then return string.char(n) end
  local bytes, marker
  if n < 65536 then bytes, marker = 2, 251
  elseif n < 4294967296 then bytes, marker = 4, 252
  else bytes, marker = 8, 253 end
  local out = { string.char(marker) }
  for i = 1, bytes do
    out[#out + 1] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end

local seq = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local env = string.sub(ARGV[1], 1, -2) .. '\1' .. varint(seq)
local ok = pcall(redis.call, 'XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. seq, 'e', env, 't', now)
if not ok then
  -- The counter was lost while the log was kept: continue after the log's last entry.
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then
    seq = tonumber(string.match(last[1][1], '%d+%-(%d+)')) + 1
    redis.call('SET', KEYS[1], seq)
    env = string.sub(ARGV[1], 1, -2) .. '\1' .. varint(seq)
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. seq, 'e', env, 't', now)
end
local expire = tonumber(ARGV[3])
if expire > 0 then
  redis.call('PEXPIRE', KEYS[1], expire)
  redis.call('PEXPIRE', KEYS[2], expire)
end
redis.call(PUBLISH, ARGV[4], env)
return seq
"#,
    )
});

/// KEYS: seq, log. ARGV: first id (`0-<since+1>`), ttl ms (0 = none).
/// Returns `{last offset, offset, envelope, offset, envelope, ...}` for the entries from the
/// first id on that are younger than the ttl, read atomically with the counter.
pub(super) static HISTORY_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "history_read",
        r#"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local ttl = tonumber(ARGV[2])
local oldest = 0
if ttl > 0 then
  local t = redis.call('TIME')
  oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
end
local out = { seq }
for _, e in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+')) do
  local at = tonumber(field(e[2], 't')) or 0
  local env = field(e[2], 'e')
  if env and at >= oldest then
    out[#out + 1] = tonumber(string.match(e[1], '%d+%-(%d+)'))
    out[#out + 1] = env
  end
end
return out
"#,
    )
});

/// KEYS: queue, its sent markers (`Keys::sent`). ARGV: max length, channel, the call's marker
/// (`''` for none), envelopes... Appends each (redeliveries 0), in order, then trims the oldest
/// ready entries past the bound (what trimming after each append would leave) and notifies once:
/// a run of SENDs to one queue is one call and one notification. Returns `{dropped, created}`:
/// how many entries were dropped, and 1 when the appends created the stream (a new queue, or one
/// deleted before it). The appends' ids are the time of these SENDs: what the sweep reads as the
/// queue's last use.
///
/// With a marker (unique per call) the call is idempotent: it adds the marker to the queue's
/// sorted set of markers (scored by time, those older than [`ENQUEUE_MARKED_FOR`] trimmed, the
/// set expiring when no call came for as long) before anything else, and a call whose marker is
/// already there did run, so it does nothing and returns `{0, 0, 1}`. The publisher sends a call
/// again, with the same marker, when its connection was lost before the reply came. The set
/// lives in the queue's slot and goes with the queue when it is deleted.
pub(super) static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "enqueue",
        &format!(
            r#"
if ARGV[3] ~= '' then
  if redis.call('ZSCORE', KEYS[2], ARGV[3]) then return {{ 0, 0, 1 }} end
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - {marked})
  redis.call('ZADD', KEYS[2], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2], {marked})
end
local created = 1 - redis.call('EXISTS', KEYS[1])
for i = 4, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
local dropped = trim(KEYS[1], tonumber(ARGV[1]))
redis.call(PUBLISH, ARGV[2], 'r')
return {{ dropped, created }}
"#,
            marked = ENQUEUE_MARKED_FOR.as_millis()
        ),
    )
});

/// How long an ENQUEUE call's marker is kept: far longer than the publisher keeps sending a call
/// again (`OUTAGE_PATIENCE` plus a command timeout or two after the first send), so that a late
/// resend still finds it, and short enough that markers cost little memory (one sorted-set
/// member per call, and a call carries a run of SENDs).
pub(super) const ENQUEUE_MARKED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// KEYS: queue, life. ARGV: node, rule's expires ms (0 = none), rule's auto-delete (0/1).
/// The node has consumers of the queue now: records it and the time, creates the consumer group
/// (and the stream) unless they exist. Returns `{created, has lifetime}`.
pub(super) static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "join",
        r#"
local created = 1 - redis.call('EXISTS', KEYS[1])
-- BUSYGROUP: it exists already.
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], GROUP, '0', 'MKSTREAM')
redis.call('HSET', KEYS[2], 'n:' .. ARGV[1], 1, 'used', now_ms())
local expires, auto = lifetime(KEYS[2], ARGV[2], ARGV[3])
local has = 0
if expires > 0 or auto then has = 1 end
return { created, has }
"#,
    )
});

/// KEYS: queue, life, sent markers. ARGV: node, rule's expires ms, rule's auto-delete (0/1).
/// The node's last consumer of the queue left. With no other node consuming it, an auto-delete
/// queue is deleted; one that expires starts its unused time now. Returns `{deleted messages or
/// -1, expires ms}`.
pub(super) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "leave",
        r#"
redis.call('HDEL', KEYS[2], 'n:' .. ARGV[1])
local expires, auto = lifetime(KEYS[2], ARGV[2], ARGV[3])
local fields = redis.call('HKEYS', KEYS[2])
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'n:' then return { -1, expires } end
end
if auto then return { drop_queue(KEYS[1], KEYS[2], KEYS[3]), 0 } end
if expires > 0 then
  redis.call('HSET', KEYS[2], 'used', now_ms())
elseif redis.call('HEXISTS', KEYS[2], 'auto') == 0 then
  -- Nothing declared and nobody consuming: nothing to remember.
  redis.call('DEL', KEYS[2])
end
return { -1, expires }
"#,
    )
});

/// KEYS: life. ARGV: expires ms (0 = none), auto-delete (0/1). A SUBSCRIBE declared the queue's
/// lifetime; it counts as use.
pub(super) static DECLARE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "declare",
        r#"
redis.call('HSET', KEYS[1], 'expires', ARGV[1], 'auto', ARGV[2], 'used', now_ms())
return 1
"#,
    )
});

/// KEYS: queue, life, sent markers. ARGV: rule's expires ms, rule's auto-delete (0/1), recheck ms, live node
/// ids... Forgets the consumers of nodes no longer alive, then deletes the queue if an
/// auto-delete queue lost its last consumer that way, or if it has had no consumer, SEND (the
/// stream's last id is the time of its last append) or SUBSCRIBE for its `expires`. Returns
/// `{deleted messages or -1, ms until the next look (0 = no lifetime: none needed)}`.
pub(super) static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "sweep",
        r#"
local live = {}
for i = 4, #ARGV do live['n:' .. ARGV[i]] = true end
local users, gone = 0, 0
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(f, 1, 2) == 'n:' then
    if live[f] then users = users + 1 else
      redis.call('HDEL', KEYS[2], f)
      gone = gone + 1
    end
  end
end
local expires, auto = lifetime(KEYS[2], ARGV[1], ARGV[2])
if users > 0 then return { -1, tonumber(ARGV[3]) } end
if auto and gone > 0 then return { drop_queue(KEYS[1], KEYS[2], KEYS[3]), 0 } end
if expires <= 0 then return { -1, 0 } end
local used = tonumber(redis.call('HGET', KEYS[2], 'used')) or 0
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if ok then
  local last = tonumber(string.match(field(info, 'last-generated-id') or '', '^(%d+)%-')) or 0
  if last > used then used = last end
elseif redis.call('EXISTS', KEYS[2]) == 0 then
  return { 0, 0 }
end
local idle = now_ms() - used
if idle >= expires then return { drop_queue(KEYS[1], KEYS[2], KEYS[3]), 0 } end
return { -1, expires - idle }
"#,
    )
});

/// KEYS: queue. ARGV: delivered (0/1), max deliveries, max length, channel, ids...
/// Returns `{dropped, moved, dead id, dead envelope, ...}`; dead entries stay pending.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "release",
        r#"
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
local dropped, moved, dead = requeue(KEYS[1], ids, ARGV[1] == '1', tonumber(ARGV[2]), tonumber(ARGV[3]))
if moved > 0 then redis.call(PUBLISH, ARGV[4], 'r') end
local out = { dropped, moved }
for _, v in ipairs(dead) do out[#out + 1] = v end
return out
"#,
    )
});

/// KEYS: queue. ARGV: consumer, min idle ms, count, max deliveries, max length, channel, cursor.
/// Claims entries idle past the limit and requeues them as redeliveries; on the first call of a
/// pass, also deletes consumers that hold nothing and were idle past the limit.
/// Returns `{next cursor, claimed, dropped, moved, dead id, dead envelope, ...}`.
pub(super) static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "reclaim",
        r#"
local ok, res = pcall(redis.call, 'XAUTOCLAIM', KEYS[1], GROUP, ARGV[1], ARGV[2], ARGV[7], 'COUNT', ARGV[3], 'JUSTID')
if not ok then return { '0-0', 0, 0, 0 } end
if ARGV[7] == '0-0' then
  -- Forget consumers (nodes) that hold nothing and were idle as long: gone, or they come back.
  local okc, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], GROUP)
  if okc then
    for _, c in ipairs(consumers) do
      local name = field(c, 'name')
      if name ~= ARGV[1] and tonumber(field(c, 'pending')) == 0 and tonumber(field(c, 'idle')) > tonumber(ARGV[2]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], GROUP, name)
      end
    end
  end
end
local ids = res[2]
local dropped, moved, dead = requeue(KEYS[1], ids, true, tonumber(ARGV[4]), tonumber(ARGV[5]))
if moved > 0 then redis.call(PUBLISH, ARGV[6], 'r') end
local out = { res[1], #ids, dropped, moved }
for _, v in ipairs(dead) do out[#out + 1] = v end
return out
"#,
    )
});

/// KEYS: queue. Ready entries: the stream's length minus the entries in flight.
pub(super) static DEPTH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "depth",
        r#"
local len = redis.call('XLEN', KEYS[1])
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], GROUP)
local pending = 0
if ok then pending = tonumber(p[1]) or 0 end
if len > pending then return len - pending end
return 0
"#,
    )
});

/// Deletes a queue's ready entries (after the group's last-delivered id), in runs of 1,000;
/// returns how many.
pub(super) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "purge",
        r#"
local start = '-'
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    if field(g, 'name') == GROUP then start = '(' .. field(g, 'last-delivered-id') end
  end
end
local purged = 0
while true do
  local run = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  if #run == 0 then break end
  for _, e in ipairs(run) do redis.call('XDEL', KEYS[1], e[1]) end
  purged = purged + #run
  start = '(' .. run[#run][1]
end
return purged
"#,
    )
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
