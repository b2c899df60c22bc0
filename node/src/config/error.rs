//! Why the configuration could not be loaded: one error enum for the layer, whose messages name
//! the setting at fault, where its value came from ([`Origin`]) and the bad value.

use std::fmt;
use std::path::PathBuf;

/// Where a setting's value came from; errors name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag, e.g. `--max-frame-size`.
    Flag(String),
    /// An environment variable, e.g. `STAMPEDE_MAX_FRAME_SIZE`.
    Env(String),
    /// The TOML file given by `--config` or `STAMPEDE_CONFIG`.
    File(PathBuf),
    /// The built-in default.
    Default,
}

/// Why the configuration could not be loaded. The message names the setting and its origin.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help`, `--version`, or a command line clap could not parse (unknown flag, missing
    /// value). Call [`clap::Error::exit`] (or [`ConfigError::exit`]) to print it as clap does.
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile { path: PathBuf, source: std::io::Error },
    /// The config file is not valid TOML.
    #[error("invalid config file {}: {source}", .path.display())]
    ParseFile { path: PathBuf, source: toml::de::Error },
    /// The config file has a key that is not a setting (usually a typo).
    #[error(
        "unknown setting {key:?} in config file {}{}",
        .path.display(),
        .suggestion.map(|s| format!(" (did you mean {s:?}?)")).unwrap_or_default()
    )]
    UnknownKey { path: PathBuf, key: String, suggestion: Option<&'static str> },
    /// An environment variable with the `STAMPEDE_` prefix that names no setting but is within
    /// two edits of one (a typo that would otherwise be ignored). Its value is not shown: it
    /// may be a secret.
    #[error("environment variable {var} names no setting (did you mean {suggestion}?)")]
    UnknownEnv { var: String, suggestion: String },
    /// One setting's value is malformed or out of range.
    #[error("invalid value for {setting} from {origin}: {value:?}: {reason}")]
    Invalid { setting: &'static str, origin: Origin, value: String, reason: String },
    /// One `[[history]]` table of the config file is malformed (1-based `entry`).
    #[error("invalid [[history]] entry {entry} in config file {}: {reason}", .path.display())]
    FileHistory { path: PathBuf, entry: usize, reason: String },
    /// One `[[queue]]` table of the config file is malformed (1-based `entry`).
    #[error("invalid [[queue]] entry {entry} in config file {}: {reason}", .path.display())]
    FileQueue { path: PathBuf, entry: usize, reason: String },
    /// One `[[acl]]` table of the config file is malformed (1-based `entry`).
    #[error("invalid [[acl]] entry {entry} in config file {}: {reason}", .path.display())]
    FileAcl { path: PathBuf, entry: usize, reason: String },
    /// A setting needs another one that is not set.
    #[error("{setting} (from {origin}) {reason}")]
    Needs { setting: &'static str, origin: Origin, reason: &'static str },
    /// Two settings are each well-formed but cannot hold together.
    #[error("{0}")]
    Conflict(Box<Conflict>),
}

/// Two settings whose values cannot hold together, each with its text and origin.
#[derive(Debug)]
pub struct Conflict {
    pub setting: &'static str,
    pub origin: Origin,
    pub value: String,
    /// How `setting` relates to `other`, e.g. "must not exceed".
    pub reason: &'static str,
    pub other: &'static str,
    pub other_origin: Origin,
    pub other_value: String,
}

impl ConfigError {
    /// Prints the error and exits: clap's own output and exit code for [`ConfigError::Cli`]
    /// (so `--help` exits 0), otherwise `stampede: <message>` on stderr and exit code 2.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(error) => error.exit(),
            other => {
                eprintln!("stampede: {other}");
                std::process::exit(2)
            }
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} (from {}) {} {} = {} (from {})",
            self.setting,
            self.value,
            self.origin,
            self.reason,
            self.other,
            self.other_value,
            self.other_origin
        )
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "command line {flag}"),
            Origin::Env(var) => write!(f, "environment {var}"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}
