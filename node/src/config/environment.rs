//! The environment as the configuration reads it: the `STAMPEDE_<NAME>` variables of the
//! settings, and the check of every other variable with that prefix. A file key that names no
//! setting is refused; a variable cannot be refused as bluntly, because the prefix is not ours
//! alone: Kubernetes names the variables of a Service called `stampede` `STAMPEDE_PORT`,
//! `STAMPEDE_SERVICE_HOST`, ..., and the project's own scripts read a few (`STAMPEDE_IMAGE`). So
//! a variable within two edits of a setting's is refused with the name it most likely meant (a
//! typo would otherwise be silently ignored), a Kubernetes service link and the project's own
//! variables pass in silence, and any other is reported as a warning for the node to log.

use std::collections::BTreeMap;
use std::fmt;

use super::settings::{closest_env_var, env_var, ACL, CONFIG_ENV, ENV_PREFIX, HISTORY, QUEUE, SETTINGS};
use super::ConfigError;

/// Variables with the prefix that the project itself uses and the node never reads: image names
/// and published ports of `docker-compose.yml` and `deploy/`, switches of the test suites.
/// Listed in docs/configuration.md.
pub(crate) const NOT_SETTINGS: &[&str] = &[
    "STAMPEDE_IMAGE",
    "STAMPEDE_REDIS_IMAGE",
    "STAMPEDE_LB_IMAGE",
    "STAMPEDE_BASE_IMAGE",
    "STAMPEDE_BINARY",
    "STAMPEDE_WS_PUBLISH",
    "STAMPEDE_STOMP_PUBLISH",
    "STAMPEDE_LB_STATS_PUBLISH",
    "STAMPEDE_SKIP_COMPOSE_TEST",
    "STAMPEDE_COMPOSE_SKIP",
    "STAMPEDE_FUZZ_CASES",
];

/// A snapshot of the environment variables. A variable set to the empty string counts as unset,
/// both for the settings and for the check of unknown names.
#[derive(Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

/// Names only: the values hold secrets, the node's and others'.
impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Environment {
    /// The process's environment. A name or value that is not UTF-8 is taken lossily, so a
    /// setting's value fails its parser visibly instead of being ignored as if unset.
    pub fn from_process() -> Environment {
        Environment::from_pairs(
            std::env::vars_os().map(|(name, value)| {
                (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned())
            }),
        )
    }

    /// Explicit variables, for tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Environment {
        let vars = pairs.into_iter().map(|(name, value)| (name.into(), value.into()));
        Environment { vars: vars.filter(|(_, value)| !value.is_empty()).collect() }
    }

    /// The value of `name`, if set and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    /// Checks every `STAMPEDE_` variable that names no setting: an error for the first that is
    /// within two edits of one, and a warning for each of the others that is neither a
    /// Kubernetes service link nor one of [`NOT_SETTINGS`].
    pub(crate) fn check_unknown(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        for var in self.vars.keys().filter(|var| var.starts_with(ENV_PREFIX)) {
            if is_setting(var) || NOT_SETTINGS.contains(&var.as_str()) || self.is_service_link(var) {
                continue;
            }
            if let Some(suggestion) = closest_env_var(var) {
                return Err(ConfigError::UnknownEnv { var: var.clone(), suggestion });
            }
            warnings.push(format!(
                "environment variable {var} names no setting and is ignored (see \
                 docs/configuration.md for the variables stampede reads)"
            ));
        }
        Ok(warnings)
    }

    /// Whether `var` is one of the variables Kubernetes sets for each Service of the namespace
    /// (`enableServiceLinks`): `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT NAME>]`,
    /// `<SVC>_PORT` and `<SVC>_PORT_<N>_<PROTOCOL>[_PROTO|_PORT|_ADDR]`. It counts as one only
    /// when `<SVC>_SERVICE_HOST` and `<SVC>_SERVICE_PORT` are both set, as Kubernetes always
    /// sets them together, so a lone `STAMPEDE_ADMIN_PORT` is still reported.
    fn is_service_link(&self, var: &str) -> bool {
        service_candidates(var).iter().any(|service| {
            self.vars.contains_key(&format!("{service}_SERVICE_HOST"))
                && self.vars.contains_key(&format!("{service}_SERVICE_PORT"))
        })
    }
}

/// Whether `var` is the variable of a setting.
fn is_setting(var: &str) -> bool {
    var == CONFIG_ENV
        || SETTINGS.iter().map(|s| s.name).chain([HISTORY, QUEUE, ACL]).any(|name| env_var(name) == var)
}

/// The Service names whose link variables `var` could be, by its shape alone.
fn service_candidates(var: &str) -> Vec<&str> {
    let mut services = Vec::new();
    if let Some(service) = var.strip_suffix("_SERVICE_HOST") {
        services.push(service);
    }
    if let Some(service) = var.strip_suffix("_PORT") {
        services.push(service);
    }
    for (at, _) in var.match_indices("_SERVICE_PORT") {
        let rest = &var[at + "_SERVICE_PORT".len()..];
        if rest.is_empty() || rest.starts_with('_') {
            services.push(&var[..at]);
        }
    }
    for (at, _) in var.match_indices("_PORT_") {
        let parts: Vec<&str> = var[at + "_PORT_".len()..].split('_').collect();
        let number = parts[0].bytes().all(|b| b.is_ascii_digit()) && !parts[0].is_empty();
        let protocol = parts.get(1).is_some_and(|p| matches!(*p, "TCP" | "UDP" | "SCTP"));
        let field = match parts.get(2) {
            None => true,
            Some(field) => parts.len() == 3 && matches!(*field, "PROTO" | "PORT" | "ADDR"),
        };
        if number && protocol && field {
            services.push(&var[..at]);
        }
    }
    services.retain(|service| !service.is_empty());
    services
}
