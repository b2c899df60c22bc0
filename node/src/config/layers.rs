//! The layering: flags, then environment variables, then the `--config` file, then the built-in
//! defaults. [`Layers`] finds a setting's text in the highest layer that sets it and parses it,
//! so a flag, a variable and a file key go through the same parser and the same messages;
//! [`Layers::resolve`] builds the whole [`Config`] and checks the rules that span two settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ArgMatches;
use serde::Deserialize;

use super::parse::{
    count, duration, grace, heartbeat, log_format, node_id, nonzero, optional_socket_addr,
    parse_history_rule, parse_queue_rule, presence_patterns, redact_url, redis_prefix, redis_url, size,
    slow_consumer, socket_addr, worker_threads,
};
use super::settings::*;
use super::{
    Config, ConfigError, Conflict, Heartbeat, HistoryRule, Limits, Origin, QueueRule, Queues, WsTuning,
};
use crate::auth;
use crate::transport::tls;

/// The config file, read and checked for unknown keys.
pub(crate) struct ConfigFile {
    pub(crate) path: PathBuf,
    table: toml::Table,
}

/// One `[[history]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryTable {
    pattern: String,
    size: usize,
    ttl: Option<String>,
}

/// One `[[queue]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct QueueTable {
    pattern: String,
    expires: Option<String>,
    #[serde(default)]
    auto_delete: bool,
}

impl ConfigFile {
    pub(crate) fn read(path: PathBuf) -> Result<ConfigFile, ConfigError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::ReadFile { path, source }),
        };
        let table = match toml::from_str::<toml::Table>(&text) {
            Ok(table) => table,
            Err(source) => return Err(ConfigError::ParseFile { path, source }),
        };
        let unknown = table.keys().find(|key| {
            ![HISTORY, QUEUE, ACL].contains(&key.as_str()) && SETTINGS.iter().all(|s| s.name != *key)
        });
        if let Some(key) = unknown {
            return Err(ConfigError::UnknownKey { suggestion: closest_setting(key), key: key.clone(), path });
        }
        Ok(ConfigFile { path, table })
    }

    pub(crate) fn origin(&self) -> Origin {
        Origin::File(self.path.clone())
    }

    /// The text of a scalar key; numbers and booleans are written out as they would be typed.
    fn scalar(&self, name: &'static str, value: &toml::Value) -> Result<String, ConfigError> {
        match value {
            toml::Value::String(text) => Ok(text.clone()),
            toml::Value::Integer(n) => Ok(n.to_string()),
            toml::Value::Float(x) => Ok(x.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            toml::Value::Array(items)
                if LIST_SETTINGS.contains(&name) && items.iter().all(toml::Value::is_str) =>
            {
                Ok(items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(","))
            }
            other => Err(ConfigError::Invalid {
                setting: name,
                origin: self.origin(),
                value: other.to_string(),
                reason: "expected a string or a number".to_owned(),
            }),
        }
    }

    fn history(&self, value: &toml::Value) -> Result<Vec<HistoryRule>, ConfigError> {
        let fail = |entry: usize, reason: String| ConfigError::FileHistory {
            path: self.path.clone(),
            entry: entry + 1,
            reason,
        };
        self.tables(value, HISTORY, "pattern, size and ttl", fail, |table: HistoryTable| {
            HistoryRule::build(&table.pattern, table.size, table.ttl.as_deref())
        })
    }

    fn queue_rules(&self, value: &toml::Value) -> Result<Vec<QueueRule>, ConfigError> {
        let fail = |entry: usize, reason: String| ConfigError::FileQueue {
            path: self.path.clone(),
            entry: entry + 1,
            reason,
        };
        self.tables(value, QUEUE, "pattern, expires and auto-delete", fail, |table: QueueTable| {
            QueueRule::build(&table.pattern, table.expires.as_deref(), table.auto_delete)
        })
    }

    /// An array of TOML tables (`[[acl]]`, `[[history]]`), each read as a `T` and turned into a
    /// rule by `build`; `fields` says what a table holds, for the errors, and `fail` names the
    /// entry that is wrong.
    pub(crate) fn tables<T: serde::de::DeserializeOwned, R>(
        &self,
        value: &toml::Value,
        setting: &'static str,
        fields: &str,
        fail: impl Fn(usize, String) -> ConfigError,
        build: impl Fn(T) -> Result<R, String>,
    ) -> Result<Vec<R>, ConfigError> {
        let Some(entries) = value.as_array() else {
            return Err(ConfigError::Invalid {
                setting,
                origin: self.origin(),
                value: value.to_string(),
                reason: format!("expected [[{setting}]] tables with {fields}"),
            });
        };
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                if !entry.is_table() {
                    return Err(fail(i, format!("expected a table with {fields}")));
                }
                let table: T = entry.clone().try_into().map_err(|e| fail(i, e.to_string()))?;
                build(table).map_err(|reason| fail(i, reason))
            })
            .collect()
    }
}

/// The places a setting can come from, highest precedence first.
pub(crate) struct Layers<'a> {
    pub(super) flags: &'a ArgMatches,
    /// Already filtered: empty values are `None`.
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) file: Option<&'a ConfigFile>,
}

/// A typed value with the setting it is for and the text it came from, for messages that
/// compare two settings.
pub(crate) struct Resolved<T> {
    pub(crate) setting: &'static str,
    pub(crate) value: T,
    pub(crate) origin: Origin,
    pub(crate) text: String,
}

impl Layers<'_> {
    /// The text of `setting` from the highest layer that sets it.
    pub(crate) fn text<B>(&self, setting: &Setting<B>) -> Result<Option<(String, Origin)>, ConfigError> {
        let name = setting.name;
        if let Some(value) = self.flags.get_one::<String>(name) {
            return Ok(Some((value.clone(), Origin::Flag(format!("--{name}")))));
        }
        let var = env_var(name);
        if let Some(value) = (self.env)(&var) {
            return Ok(Some((value, Origin::Env(var))));
        }
        if let Some(file) = self.file {
            if let Some(value) = file.table.get(name) {
                return Ok(Some((file.scalar(name, value)?, file.origin())));
            }
        }
        Ok(None)
    }

    /// The parsed value of `setting` if some layer sets it.
    fn set<B, T>(
        &self,
        setting: &Setting<B>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Resolved<T>>, ConfigError> {
        let Some((text, origin)) = self.text(setting)? else {
            return Ok(None);
        };
        match parse(text.trim()) {
            Ok(value) => Ok(Some(Resolved { setting: setting.name, value, origin, text })),
            Err(reason) => Err(ConfigError::Invalid {
                setting: setting.name,
                origin,
                value: printable(setting, &text),
                reason,
            }),
        }
    }

    /// The parsed value of a setting without a built-in value, if some layer sets it.
    pub(crate) fn optional<T>(
        &self,
        setting: &Setting<Computed>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Resolved<T>>, ConfigError> {
        self.set(setting, parse)
    }

    /// The parsed value of `setting`, falling back to its built-in value.
    pub(crate) fn value<T>(
        &self,
        setting: &Setting<Value>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Resolved<T>, ConfigError> {
        if let Some(resolved) = self.set(setting, &parse)? {
            return Ok(resolved);
        }
        let Value(text) = setting.builtin;
        let value = parse(text).map_err(|reason| ConfigError::Invalid {
            setting: setting.name,
            origin: Origin::Default,
            value: text.to_owned(),
            reason,
        })?;
        Ok(Resolved { setting: setting.name, value, origin: Origin::Default, text: text.to_owned() })
    }

    /// The layer a list setting (`history`, `acl`) is taken from, as [`Layers::rules`] takes it.
    pub(crate) fn list_origin(&self, name: &'static str) -> Origin {
        if self.flags.get_many::<String>(name).is_some() {
            return Origin::Flag(format!("--{name}"));
        }
        let var = env_var(name);
        if (self.env)(&var).is_some() {
            return Origin::Env(var);
        }
        match self.file {
            Some(file) if file.table.contains_key(name) => file.origin(),
            _ => Origin::Default,
        }
    }

    /// List rules (`--history`, `--acl`) from the highest layer that has any; layers are not
    /// merged. Flags repeat, the environment variable separates rules with `;`, and the file's
    /// `[[name]]` tables are read by `file_rules`.
    pub(crate) fn rules<R>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<R, String>,
        file_rules: impl Fn(&ConfigFile, &toml::Value) -> Result<Vec<R>, ConfigError>,
    ) -> Result<Resolved<Vec<R>>, ConfigError> {
        let parse_all = |items: Vec<&str>, origin: Origin| -> Result<Resolved<Vec<R>>, ConfigError> {
            let rules = items
                .iter()
                .map(|item| {
                    parse(item).map_err(|reason| ConfigError::Invalid {
                        setting: name,
                        origin: origin.clone(),
                        value: (*item).to_owned(),
                        reason,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Resolved { setting: name, value: rules, origin, text: items.join("; ") })
        };
        if let Some(items) = self.flags.get_many::<String>(name) {
            let items = items.map(String::as_str).collect();
            return parse_all(items, Origin::Flag(format!("--{name}")));
        }
        let var = env_var(name);
        if let Some(list) = (self.env)(&var) {
            let items = list.split(';').map(str::trim).filter(|s| !s.is_empty());
            return parse_all(items.collect(), Origin::Env(var));
        }
        match self.file.and_then(|file| Some((file, file.table.get(name)?))) {
            Some((file, value)) => Ok(Resolved {
                setting: name,
                value: file_rules(file, value)?,
                origin: file.origin(),
                text: format!("[[{name}]]"),
            }),
            None => Ok(Resolved {
                setting: name,
                value: Vec::new(),
                origin: Origin::Default,
                text: String::new(),
            }),
        }
    }

    /// Every setting, typed and checked.
    pub(crate) fn resolve(&self) -> Result<Config, ConfigError> {
        let listen = self.value(&LISTEN, socket_addr)?;
        let stomp_listen = self.value(&STOMP_LISTEN, optional_socket_addr)?;
        let admin_listen = self.value(&ADMIN_LISTEN, optional_socket_addr)?;
        let redis_url = self.optional(&REDIS_URL, redis_url)?.and_then(|r| r.value);
        let redis_prefix = self.value(&REDIS_PREFIX, redis_prefix)?.value;
        let node_id = match self.optional(&NODE_ID, node_id)? {
            Some(resolved) => resolved.value,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let log_format = self.value(&LOG_FORMAT, log_format)?.value;
        let worker_threads = self.value(&WORKER_THREADS, worker_threads)?.value;

        let max_frame_size = self.value(&MAX_FRAME_SIZE, |s| nonzero(size(s)))?;
        let max_body_size = self.value(&MAX_BODY_SIZE, |s| nonzero(size(s)))?;
        check_at_most(&max_body_size, &max_frame_size)?;
        // A frame larger than the outbound buffer could never be queued whole: one large
        // message would trip the slow-consumer policy of a client that reads perfectly well.
        let outbound_buffer = self.value(&OUTBOUND_BUFFER, |s| nonzero(size(s)))?;
        check_at_least(&outbound_buffer, &max_frame_size)?;
        let limits = Limits {
            max_frame_size: max_frame_size.value,
            max_body_size: max_body_size.value,
            max_headers: self.value(&MAX_HEADERS, |s| nonzero(count(s)))?.value,
            max_header_length: self.value(&MAX_HEADER_LENGTH, |s| nonzero(size(s)))?.value,
            max_subscriptions: self.value(&MAX_SUBSCRIPTIONS, |s| nonzero(count(s)))?.value,
            max_transactions: self.value(&MAX_TRANSACTIONS, |s| nonzero(count(s)))?.value,
            max_connections: self.value(&MAX_CONNECTIONS, count)?.value,
            max_connections_per_ip: self.value(&MAX_CONNECTIONS_PER_IP, count)?.value,
            max_frame_rate: self.value(&MAX_FRAME_RATE, count)?.value,
            frame_rate_burst: self.value(&FRAME_RATE_BURST, |s| nonzero(count(s)))?.value,
            connect_timeout: self.value(&CONNECT_TIMEOUT, |s| nonzero(duration(s)))?.value,
            write_timeout: Some(self.value(&WRITE_TIMEOUT, duration)?.value).filter(|t| !t.is_zero()),
            outbound_buffer: outbound_buffer.value,
            slow_consumer: self.value(&SLOW_CONSUMER, slow_consumer)?.value,
        };

        let (send, receive) = self.value(&HEARTBEAT, heartbeat)?.value;
        let heartbeat = Heartbeat { send, receive, grace: self.value(&HEARTBEAT_GRACE, grace)?.value };

        let queues = Queues {
            max_length: self.value(&QUEUE_MAX_LENGTH, |s| nonzero(count(s)))?.value,
            default_prefetch: self.value(&PREFETCH_DEFAULT, |s| nonzero(count(s)))?.value,
            reclaim_after: self.value(&QUEUE_RECLAIM_AFTER, |s| nonzero(duration(s)))?.value,
            max_deliveries: self.value(&QUEUE_MAX_DELIVERIES, count)?.value,
        };

        let ws = WsTuning {
            read_buffer: self.value(&WS_READ_BUFFER, |s| nonzero(size(s)))?.value,
            write_buffer: self.value(&WS_WRITE_BUFFER, |s| nonzero(size(s)))?.value,
        };

        let drain_period = self.value(&DRAIN_PERIOD, duration)?.value;
        let history = self.rules(HISTORY, parse_history_rule, ConfigFile::history)?.value;
        let queue_rules = self.rules(QUEUE, parse_queue_rule, ConfigFile::queue_rules)?.value;
        let presence = self.optional(&PRESENCE, presence_patterns)?.map(|r| r.value).unwrap_or_default();
        let auth = auth::settings::resolve(self)?;
        let tls = tls::resolve_files(self)?;
        let origins = auth::settings::resolve_origins(self)?;
        let sockjs = crate::transport::sockjs::settings::resolve(self)?;
        let apps = crate::apps::settings::resolve(self)?;

        check_distinct_ports(&[
            (listen.setting, Some(listen.value), &listen.origin),
            (stomp_listen.setting, stomp_listen.value, &stomp_listen.origin),
            (admin_listen.setting, admin_listen.value, &admin_listen.origin),
        ])?;

        Ok(Config {
            listen: listen.value,
            stomp_listen: stomp_listen.value,
            admin_listen: admin_listen.value,
            redis_url,
            redis_prefix,
            node_id,
            log_format,
            worker_threads,
            limits,
            heartbeat,
            queues,
            ws,
            drain_period,
            history,
            queue_rules,
            presence,
            auth,
            tls,
            origins,
            sockjs,
            apps,
        })
    }
}

/// A setting's text as messages and `check-config` may show it: `***` for a secret, the Redis URL
/// without its password.
pub(crate) fn printable<B>(setting: &Setting<B>, text: &str) -> String {
    if setting.secret {
        "***".to_owned()
    } else if setting.name == REDIS_URL.name {
        redact_url(text)
    } else {
        text.to_owned()
    }
}

/// `small` must not exceed `large`.
fn check_at_most(small: &Resolved<usize>, large: &Resolved<usize>) -> Result<(), ConfigError> {
    if small.value <= large.value {
        return Ok(());
    }
    Err(conflict(small, "must not exceed", large))
}

/// `large` must be at least `small`.
fn check_at_least(large: &Resolved<usize>, small: &Resolved<usize>) -> Result<(), ConfigError> {
    if large.value >= small.value {
        return Ok(());
    }
    Err(conflict(large, "must be at least", small))
}

fn conflict(setting: &Resolved<usize>, reason: &'static str, other: &Resolved<usize>) -> ConfigError {
    ConfigError::Conflict(Box::new(Conflict {
        setting: setting.setting,
        origin: setting.origin.clone(),
        value: setting.text.clone(),
        reason,
        other: other.setting,
        other_origin: other.origin.clone(),
        other_value: other.text.clone(),
    }))
}

/// Two enabled listeners on the same non-zero port and overlapping addresses would make the
/// second bind fail; say so before binding. Port 0 (chosen by the OS) never conflicts.
fn check_distinct_ports(
    listeners: &[(&'static str, Option<SocketAddr>, &Origin)],
) -> Result<(), ConfigError> {
    for (i, &(name, addr, origin)) in listeners.iter().enumerate() {
        for &(other, other_addr, other_origin) in &listeners[..i] {
            let (Some(a), Some(b)) = (addr, other_addr) else {
                continue;
            };
            let overlap = a.ip() == b.ip()
                || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()));
            if a.port() != 0 && a.port() == b.port() && overlap {
                return Err(ConfigError::Conflict(Box::new(Conflict {
                    setting: name,
                    origin: origin.clone(),
                    value: a.to_string(),
                    reason: "must not share a port with",
                    other,
                    other_origin: other_origin.clone(),
                    other_value: b.to_string(),
                })));
            }
        }
    }
    Ok(())
}
