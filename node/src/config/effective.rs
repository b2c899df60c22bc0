//! The effective configuration as `stampede check-config` prints it: TOML keyed like the file,
//! one line per setting in `--help` order with the layer its value came from, then the history,
//! queue and access rules as `[[history]]`, `[[queue]]` and `[[acl]]` tables. Secrets print as `***` and the Redis
//! URL without its password. A setting no layer sets prints as a comment: its built-in value,
//! or what leaving it unset means (`# redis-url: unset`). So the output read back as a config
//! file (with the secrets given again) is the same configuration: the defaults stay defaults,
//! and a default of a setting that needs another (`jwt-user-claim`) is not turned into a value.

use std::fmt::Write as _;

use super::layers::{printable, Layers};
use super::settings::{Builtin, Value, ACL, HISTORY, QUEUE, SETTINGS};
use super::{Config, ConfigError, Origin, Subject};

/// Lines longer than this are not padded to align their comments.
const ALIGN: usize = 44;

/// The effective configuration of `config`, resolved from `layers`.
pub(crate) fn render(layers: &Layers<'_>, config: &Config) -> Result<String, ConfigError> {
    // (line, origin); a setting left to its computed meaning has no origin to show.
    let mut lines: Vec<(String, Option<Origin>)> = Vec::new();
    for setting in SETTINGS {
        let line = match (layers.text(setting)?, setting.builtin) {
            (Some((text, origin)), _) => {
                (format!("{} = {}", setting.name, quoted(&printable(setting, &text))), Some(origin))
            }
            (None, Builtin::Value(Value(text))) => {
                (format!("# {} = {}", setting.name, quoted(text)), Some(Origin::Default))
            }
            (None, Builtin::Computed(_)) => {
                (format!("# {}: {}", setting.name, setting.builtin.shown()), None)
            }
        };
        lines.push(line);
    }
    let mut out = String::from(
        "# The effective configuration, each setting with the layer it came from (flags, then\n\
         # environment, then file, then built-in default); a setting no layer sets is a comment.\n\
         # Secrets are shown as \"***\".\n",
    );
    if let Some(file) = layers.file {
        let _ = writeln!(out, "# config file: {}", file.path.display());
    }
    for (line, origin) in lines {
        // Writing to a String cannot fail.
        let _ = match origin {
            Some(origin) => writeln!(out, "{line:<ALIGN$}  # {origin}"),
            None => writeln!(out, "{line}"),
        };
    }

    let _ = writeln!(out, "\n# {HISTORY}: {}", list_origin(layers, HISTORY, config.history.len()));
    for rule in &config.history {
        let _ = writeln!(out, "[[{HISTORY}]]\npattern = {}\nsize = {}", quoted(&rule.pattern), rule.size);
        if let Some(ttl) = rule.ttl {
            let _ = writeln!(out, "ttl = {}", quoted(&humantime::format_duration(ttl).to_string()));
        }
    }
    let _ = writeln!(out, "\n# {QUEUE}: {}", list_origin(layers, QUEUE, config.queue_rules.len()));
    for rule in &config.queue_rules {
        let _ = writeln!(out, "[[{QUEUE}]]\npattern = {}", quoted(&rule.pattern));
        if let Some(expires) = rule.lifetime.expires {
            let _ = writeln!(out, "expires = {}", quoted(&humantime::format_duration(expires).to_string()));
        }
        if rule.lifetime.auto_delete {
            let _ = writeln!(out, "auto-delete = true");
        }
    }
    let _ = writeln!(out, "\n# {ACL}: {}", list_origin(layers, ACL, config.auth.acl.len()));
    for rule in &config.auth.acl {
        let _ = writeln!(out, "[[{ACL}]]");
        match &rule.subject {
            Subject::Anyone => {}
            Subject::User(name) => {
                let _ = writeln!(out, "user = {}", quoted(name));
            }
            Subject::Role(name) => {
                let _ = writeln!(out, "role = {}", quoted(name));
            }
        }
        let _ = writeln!(out, "publish = {}\nsubscribe = {}", array(&rule.publish), array(&rule.subscribe));
    }
    Ok(out)
}

/// Where a list came from, or that there is none.
fn list_origin(layers: &Layers<'_>, name: &'static str, len: usize) -> String {
    match layers.list_origin(name) {
        Origin::Default => "none".to_owned(),
        origin => format!("{len} from {origin}"),
    }
}

/// `text` as a TOML string, escaped.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn array(items: &[String]) -> String {
    toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect()).to_string()
}
