//! Redis key and channel names, and the translation of `redis-url` into fred's configuration.
//!
//! Every key of one destination carries the hash tag `{<destination>}`, so on Redis Cluster all of
//! them live in one slot and a Lua script may touch them together. Keys that span destinations
//! (the queue set, the node registry) are only ever used by single commands.

use fred::types::config::Config as FredConfig;

/// The consumer group of every queue stream.
pub(super) const GROUP: &str = "stampede";

/// Names of keys and channels under one prefix.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
    channel_prefix: String,
    /// Sharded pub/sub (Redis Cluster): a destination's channel carries its hash tag.
    sharded: bool,
}

impl Keys {
    pub(super) fn new(prefix: &str, sharded: bool) -> Keys {
        Keys { prefix: prefix.to_owned(), channel_prefix: format!("{prefix}:ch:"), sharded }
    }

    /// `P:{<destination>}<suffix>`: a key in the destination's slot. Built by hand rather than
    /// with `format!`: queue keys are named on every SEND, and naming them with `format!` was
    /// 3.9% of a node's samples in the queue benchmark on Redis (bench/notes.md).
    fn tagged(&self, destination: &str, suffix: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + destination.len() + suffix.len() + 3);
        key.push_str(&self.prefix);
        key.push_str(":{");
        key.push_str(destination);
        key.push('}');
        key.push_str(suffix);
        key
    }

    /// Whether channels are shard channels (SPUBLISH/SSUBSCRIBE), as on Redis Cluster.
    pub(super) fn sharded(&self) -> bool {
        self.sharded
    }

    /// Stream of a history topic: entries `0-<offset>` with fields `e` (envelope), `t` (ms).
    pub(super) fn log(&self, destination: &str) -> String {
        self.tagged(destination, ":log")
    }

    /// Counter of a history topic: its last offset.
    pub(super) fn seq(&self, destination: &str) -> String {
        self.tagged(destination, ":seq")
    }

    /// Stream of a queue: fields `e` (envelope), `r` (redeliveries; absent: 0).
    pub(super) fn queue(&self, queue: &str) -> String {
        self.tagged(queue, ":q")
    }

    /// Sorted set of a queue's ENQUEUE call markers, scored by time (`scripts::ENQUEUE`).
    pub(super) fn sent(&self, queue: &str) -> String {
        self.tagged(queue, ":sent")
    }

    /// Hash of a queue's lifetime and users: `expires` (ms) and `auto` (0/1) when a SUBSCRIBE
    /// declared them, `used` (ms: its last SUBSCRIBE, or its last consumer leaving) and one
    /// `n:<node-id>` field per node that has consumers of it.
    pub(super) fn life(&self, queue: &str) -> String {
        self.tagged(queue, ":life")
    }

    /// Sorted set of the queues that have a lifetime, scored by when (ms) to look at them next.
    pub(super) fn lifetimes(&self) -> String {
        format!("{}:lifetimes", self.prefix)
    }

    /// Held (SET NX PX) by the node sweeping queues, so one node at a time does.
    pub(super) fn sweeper(&self) -> String {
        format!("{}:sweeper", self.prefix)
    }

    /// A value set once (SET NX) by the first node to connect: a different one after a
    /// reconnection means Redis lost its data (see `losses.rs`).
    pub(super) fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Set of every queue name ever enqueued to, for reclaiming and depth metrics.
    pub(super) fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Hash of one node's heartbeat.
    pub(super) fn node(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}", self.prefix)
    }

    /// Sorted set of node ids by last heartbeat (ms).
    pub(super) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash of a destination's presence: field `<node-id>\t<session>`, value the user (empty for
    /// an anonymous session).
    pub(super) fn presence(&self, destination: &str) -> String {
        self.tagged(destination, ":presence")
    }

    /// Set of the destinations in which a node has presence members.
    pub(super) fn node_presence(&self, node_id: &str) -> String {
        format!("{}:node:{node_id}:presence", self.prefix)
    }

    /// Held (SET NX PX) by the node removing a dead node's presence members, so one node does.
    pub(super) fn presence_reaper(&self, node_id: &str, last_seen_ms: u64) -> String {
        format!("{}:node:{node_id}:reaper:{last_seen_ms}", self.prefix)
    }

    /// Pub/sub channel of the admin API's questions to every node.
    pub(super) fn calls(&self) -> String {
        format!("{}:calls", self.prefix)
    }

    /// Pub/sub channel of the answers to one node's questions.
    pub(super) fn answers(&self, node_id: &str) -> String {
        format!("{}:calls:{node_id}", self.prefix)
    }

    /// The channel of messages for the sessions of the node whose session tag is `tag`.
    pub(super) fn to_sessions(&self, tag: &str) -> String {
        format!("{}:to:{tag}", self.prefix)
    }

    /// Pub/sub channel of a destination: envelopes for topics, "ready" notes for queues. With
    /// sharded pub/sub it is a shard channel in the slot of the destination's keys
    /// (`P:ch:{/topic/t}`), so a script over those keys may SPUBLISH on it.
    pub(super) fn channel(&self, destination: &str) -> String {
        let mut channel = String::with_capacity(self.channel_prefix.len() + destination.len() + 2);
        channel.push_str(&self.channel_prefix);
        if self.sharded {
            channel.push('{');
            channel.push_str(destination);
            channel.push('}');
        } else {
            channel.push_str(destination);
        }
        channel
    }

    /// The destination a channel belongs to.
    pub(super) fn destination_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel.strip_prefix(self.channel_prefix.as_str())?;
        if self.sharded {
            rest.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(rest)
        }
    }
}

/// A `redis-url` read: fred's configuration, without TLS, and whether the URL asks for it.
pub(super) struct RedisUrl {
    pub(super) config: FredConfig,
    /// A `rediss` form: the engine adds its own connector (`tls.rs`), so fred loads nothing.
    pub(super) tls: bool,
}

/// Turns a `redis-url` as the configuration accepts it into fred's configuration.
///
/// Accepted: `redis://[user:pass@]host[:port][/db]`; Sentinel as
/// `redis+sentinel://` or `redis-sentinel://[user:pass@]s1[:port][,s2[:port]...]/<service>[/db]`
/// (the service may also be given as `?sentinelServiceName=` or `#service`); Cluster as
/// `redis-cluster://` or `redis+cluster://[user:pass@]n1[:port][,n2[:port]...]`. Several hosts are
/// also accepted as fred's own `?node=host:port` parameters. Each has a TLS form with `rediss`
/// (`rediss://`, `rediss+sentinel://`, `rediss-cluster://`, ...): fred is given the plain form and
/// [`RedisUrl::tls`] says to add the connector, so TLS never depends on fred's defaults.
pub(super) fn fred_config(url: &str) -> Result<RedisUrl, String> {
    const EXPECTED: &str =
        "expected a URL starting with redis://, rediss://, redis+sentinel:// or redis-cluster://";
    let (scheme, rest) = url.split_once("://").ok_or_else(|| EXPECTED.to_owned())?;
    let (kind, tls) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (Kind::Server, false),
        "rediss" => (Kind::Server, true),
        "redis+sentinel" | "redis-sentinel" => (Kind::Sentinel, false),
        "rediss+sentinel" | "rediss-sentinel" => (Kind::Sentinel, true),
        "redis-cluster" | "redis+cluster" => (Kind::Cluster, false),
        "rediss-cluster" | "rediss+cluster" => (Kind::Cluster, true),
        _ => return Err(EXPECTED.to_owned()),
    };

    // Split `[userinfo@]hosts[/path][?query][#fragment]`.
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    let Some((first, others)) = hosts.split_first() else {
        return Err("no host given".to_owned());
    };
    let mut params: Vec<String> =
        query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut db = None;
    let mut service = None;
    for segment in &segments {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            db = Some(*segment);
        } else if service.is_none() {
            service = Some(*segment);
        } else {
            return Err(format!("unexpected path segment {segment:?}"));
        }
    }

    let (fred_scheme, default_port) = match kind {
        Kind::Server => ("redis", 6379),
        Kind::Sentinel => ("redis-sentinel", 26379),
        Kind::Cluster => ("redis-cluster", 6379),
    };
    match kind {
        Kind::Server => {
            if !others.is_empty() {
                return Err("redis:// takes one host; use redis-cluster:// or redis+sentinel:// for several"
                    .to_owned());
            }
            if let Some(service) = service {
                return Err(format!("unexpected path {service:?}: redis:// takes a database number"));
            }
        }
        Kind::Sentinel => {
            let named = params.iter().any(|p| p.starts_with("sentinelServiceName="));
            match service.or(fragment.filter(|f| !f.is_empty())) {
                Some(name) if !named => params.push(format!("sentinelServiceName={name}")),
                Some(_) => return Err("the Sentinel service is named twice".to_owned()),
                None if named => {}
                None => {
                    return Err("name the Sentinel service: redis+sentinel://host:26379/<service>".to_owned())
                }
            }
        }
        Kind::Cluster => {
            if let Some(service) = service {
                return Err(format!("unexpected path {service:?}: a cluster has no database or service"));
            }
            db = None;
        }
    }
    for host in others {
        params.push(format!("node={}", with_port(host, default_port)));
    }

    let mut out = format!("{fred_scheme}://");
    if let Some(userinfo) = userinfo {
        out.push_str(userinfo);
        out.push('@');
    }
    out.push_str(first);
    if let Some(db) = db {
        out.push('/');
        out.push_str(db);
    }
    if !params.is_empty() {
        out.push('?');
        out.push_str(&params.join("&"));
    }
    let config = FredConfig::from_url(&out).map_err(|e| e.details().to_string())?;
    Ok(RedisUrl { config, tls })
}

#[derive(Clone, Copy)]
enum Kind {
    Server,
    Sentinel,
    Cluster,
}

/// `host` with `:port` added when it has none (IPv6 literals are bracketed).
fn with_port(host: &str, port: u16) -> String {
    let has_port = match host.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::types::config::Server;
    use fred::types::config::ServerConfig;

    fn hosts(config: &FredConfig) -> Vec<(String, u16)> {
        let list: Vec<Server> = match &config.server {
            ServerConfig::Centralized { server } => vec![server.clone()],
            ServerConfig::Clustered { hosts, .. } => hosts.clone(),
            ServerConfig::Sentinel { hosts, .. } => hosts.clone(),
        };
        let mut out: Vec<(String, u16)> = list.into_iter().map(|s| (s.host.to_string(), s.port)).collect();
        out.sort();
        out
    }

    #[test]
    fn layout_shares_one_hash_tag_per_destination() {
        let keys = Keys::new("stampede", false);
        assert_eq!(keys.log("/topic/a"), "stampede:{/topic/a}:log");
        assert_eq!(keys.seq("/topic/a"), "stampede:{/topic/a}:seq");
        assert_eq!(keys.queue("/queue/q"), "stampede:{/queue/q}:q");
        assert_eq!(keys.channel("/topic/a"), "stampede:ch:/topic/a");
        assert_eq!(keys.destination_of("stampede:ch:/queue/q"), Some("/queue/q"));
        assert_eq!(keys.destination_of("other:ch:/queue/q"), None);
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        assert_eq!(slot(&keys.log("/topic/a")), slot(&keys.seq("/topic/a")));
        assert_eq!(slot(&keys.queue("/topic/a")), slot(&keys.seq("/topic/a")));
        assert_eq!(keys.life("/queue/q"), "stampede:{/queue/q}:life");
        assert_eq!(slot(&keys.life("/queue/q")), slot(&keys.queue("/queue/q")));
        assert_eq!(keys.presence("/topic/a"), "stampede:{/topic/a}:presence");
        assert_eq!(slot(&keys.presence("/topic/a")), slot(&keys.log("/topic/a")));
    }

    #[test]
    fn shard_channels_live_in_their_destinations_slot() {
        let keys = Keys::new("stampede", true);
        let slot = |k: &str| fred::util::redis_keyslot(k.as_bytes());
        for destination in
            ["/topic/a", "/queue/q", "/user/u/queue/x", "/topic/odd}name{", "/presence/topic/a"]
        {
            let channel = keys.channel(destination);
            assert_eq!(slot(&channel), slot(&keys.log(destination)), "{channel}");
            assert_eq!(slot(&channel), slot(&keys.queue(destination)), "{channel}");
            assert_eq!(keys.destination_of(&channel), Some(destination));
        }
        assert_eq!(keys.channel("/topic/a"), "stampede:ch:{/topic/a}");
        assert_eq!(keys.destination_of("stampede:ch:/topic/a"), None, "a classic channel name");
        assert_eq!(keys.destination_of("stampede:calls"), None);
    }

    #[test]
    fn standalone_urls() {
        let c = fred_config("redis://localhost:6380/2").expect("valid").config;
        assert_eq!(hosts(&c), vec![("localhost".to_owned(), 6380)]);
        assert_eq!(c.database, Some(2));
        let c = fred_config("REDIS://user:pw@cache").expect("valid").config;
        assert_eq!(hosts(&c), vec![("cache".to_owned(), 6379)]);
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert!(fred_config("redis://a,b").is_err());
    }

    #[test]
    fn sentinel_urls() {
        for url in [
            "redis+sentinel://s1:26379,s2/mymaster",
            "redis-sentinel://s1:26379,s2:26379/mymaster/0",
            "redis-sentinel://s1,s2#mymaster",
            "redis-sentinel://s1?sentinelServiceName=mymaster&node=s2:26379",
        ] {
            let c = fred_config(url).unwrap_or_else(|e| panic!("{url}: {e}")).config;
            assert_eq!(hosts(&c), vec![("s1".to_owned(), 26379), ("s2".to_owned(), 26379)], "{url}");
            match &c.server {
                ServerConfig::Sentinel { service_name, .. } => assert_eq!(service_name, "mymaster"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let e = fred_config("redis+sentinel://s1:26379").err().expect("no service");
        assert!(e.contains("Sentinel service"), "{e}");
    }

    #[test]
    fn cluster_urls() {
        for url in ["redis-cluster://n1:7000,n2:7001", "redis+cluster://n1:7000?node=n2:7001"] {
            let c = fred_config(url).unwrap_or_else(|e| panic!("{url}: {e}")).config;
            assert_eq!(hosts(&c), vec![("n1".to_owned(), 7000), ("n2".to_owned(), 7001)], "{url}");
            assert!(matches!(c.server, ServerConfig::Clustered { .. }));
        }
        let c = fred_config("redis-cluster://n1,n2").expect("valid").config;
        assert_eq!(hosts(&c), vec![("n1".to_owned(), 6379), ("n2".to_owned(), 6379)]);
    }

    #[test]
    fn tls_forms_read_as_their_plain_forms_and_ask_for_tls() {
        for (tls, plain) in [
            ("rediss://user:pw@cache:6380/2", "redis://user:pw@cache:6380/2"),
            ("rediss+sentinel://s1,s2:26380/mymaster", "redis+sentinel://s1,s2:26380/mymaster"),
            ("REDISS-SENTINEL://s1#mymaster", "redis-sentinel://s1#mymaster"),
            ("rediss-cluster://n1:7000,n2:7001", "redis-cluster://n1:7000,n2:7001"),
            ("rediss+cluster://n1:7000?node=n2:7001", "redis+cluster://n1:7000?node=n2:7001"),
        ] {
            let secure = fred_config(tls).unwrap_or_else(|e| panic!("{tls}: {e}"));
            let open = fred_config(plain).unwrap_or_else(|e| panic!("{plain}: {e}"));
            assert!(secure.tls && !open.tls, "{tls}");
            // fred loads no connector of its own: the engine adds one (`tls.rs`).
            assert!(secure.config.tls.is_none(), "{tls}");
            // Otherwise the same: hosts, credentials, database, service (fred's Config has no `==`).
            assert_eq!(format!("{:?}", secure.config), format!("{:?}", open.config), "{tls}");
        }
        let e = fred_config("rediss+sentinel://s1:26379").err().expect("no service");
        assert!(e.contains("Sentinel service"), "{e}");
        for bad in ["http://h", "h:6379", "redisss://h"] {
            let e = fred_config(bad).err().expect(bad);
            assert!(e.starts_with("expected a URL starting with redis://, rediss://"), "{bad}: {e}");
        }
    }
}
