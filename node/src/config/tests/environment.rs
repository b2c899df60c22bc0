//! Tests of the `STAMPEDE_` variables that name no setting: a near miss stops the node with the
//! name it meant, Kubernetes service links and the project's own variables pass in silence, any
//! other is a warning.

use super::{err, load_all};
use crate::config::environment::NOT_SETTINGS;
use crate::config::settings::{env_var, ACL, CONFIG_ENV, HISTORY, SETTINGS};
use crate::config::ConfigError;

/// The warnings of a configuration that loads.
fn warnings(env: &[(&str, &str)]) -> Vec<String> {
    load_all(&[], env).unwrap_or_else(|e| panic!("expected a valid config: {e}")).warnings
}

/// A variable far from every setting, reported as a warning.
const STRANGER: (&str, &str) = ("STAMPEDE_GREETING", "hello");

/// Asserts that the one warning of `env` + [`STRANGER`] is the stranger's: nothing else in `env`
/// is reported (and the check is on).
fn only_the_stranger_is_reported(env: &[(&str, &str)]) {
    let env: Vec<(&str, &str)> = env.iter().copied().chain([STRANGER]).collect();
    let found = warnings(&env);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("environment variable STAMPEDE_GREETING names no setting"), "{found:?}");
}

#[test]
fn a_misspelt_variable_is_refused_with_the_name_it_meant() {
    let e = err(&[], &[("STAMPEDE_MAX_FRME_SIZE", "12x")]);
    assert_eq!(
        e,
        "environment variable STAMPEDE_MAX_FRME_SIZE names no setting \
         (did you mean STAMPEDE_MAX_FRAME_SIZE?)"
    );
    for (typo, meant) in [
        ("STAMPEDE_REDIS_URI", "STAMPEDE_REDIS_URL"),
        ("STAMPEDE_HISTROY", "STAMPEDE_HISTORY"),
        ("STAMPEDE_ACLS", "STAMPEDE_ACL"),
        ("STAMPEDE_CONFG", "STAMPEDE_CONFIG"),
        ("STAMPEDE_max_frame_size", "STAMPEDE_MAX_FRAME_SIZE"),
        ("STAMPEDE_JWT_SECRTE", "STAMPEDE_JWT_SECRET"),
    ] {
        let e = err(&[], &[(typo, "some-value")]);
        assert!(e.contains(typo) && e.ends_with(&format!("(did you mean {meant}?)")), "{e}");
        assert!(!e.contains("some-value"), "the value may be a secret: {e}");
    }
}

#[test]
fn a_misspelt_variable_is_refused_before_the_flags_are_resolved() {
    // Even with the real variable set too, and under check-config.
    let env = [("STAMPEDE_LISTEN", "127.0.0.1:1"), ("STAMPEDE_LSITEN", "127.0.0.1:2")];
    assert!(matches!(load_all(&["check-config"], &env), Err(ConfigError::UnknownEnv { .. })));
    // --help still answers.
    assert!(matches!(load_all(&["--help"], &env), Err(ConfigError::Cli(_))));
}

#[test]
fn every_setting_variable_is_accepted() {
    let names = SETTINGS.iter().map(|s| s.name).chain([HISTORY, ACL]).map(env_var);
    let vars: Vec<String> = names.chain([CONFIG_ENV.to_owned()]).collect();
    // An empty value is unset, so every variable can be present without a valid value.
    only_the_stranger_is_reported(&vars.iter().map(|var| (var.as_str(), "")).collect::<Vec<_>>());
    only_the_stranger_is_reported(&[("STAMPEDE_MAX_FRAME_SIZE", "2MiB"), ("STAMPEDE_LOG_FORMAT", "json")]);
}

#[test]
fn a_variable_far_from_every_setting_is_a_warning() {
    let found = warnings(&[STRANGER, ("STAMPEDE_ADMIN_PORT", "9091")]);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("environment variable STAMPEDE_ADMIN_PORT names no setting"), "{found:?}");
    assert!(found[1].starts_with("environment variable STAMPEDE_GREETING names no setting"), "{found:?}");
    // Empty counts as unset, and other prefixes are not ours.
    assert!(warnings(&[("STAMPEDE_GREETING", ""), ("STAMPEDEX", "1"), ("MY_STAMPEDE_X", "1")]).is_empty());
}

#[test]
fn the_projects_own_variables_pass_in_silence() {
    only_the_stranger_is_reported(&NOT_SETTINGS.iter().map(|var| (*var, "x")).collect::<Vec<_>>());
}

/// What Kubernetes sets in a pod for a Service named `name` with these (name, port) ports.
fn service_links(service: &str, ports: &[(&str, u16)]) -> Vec<(String, String)> {
    let svc = service.to_ascii_uppercase().replace('-', "_");
    let (_, first) = ports[0];
    let mut vars = vec![
        (format!("{svc}_SERVICE_HOST"), "10.96.0.10".to_owned()),
        (format!("{svc}_SERVICE_PORT"), first.to_string()),
        (format!("{svc}_PORT"), format!("tcp://10.96.0.10:{first}")),
    ];
    for (name, port) in ports {
        let name = name.to_ascii_uppercase().replace('-', "_");
        vars.push((format!("{svc}_SERVICE_PORT_{name}"), port.to_string()));
        let base = format!("{svc}_PORT_{port}_TCP");
        vars.push((base.clone(), format!("tcp://10.96.0.10:{port}")));
        vars.push((format!("{base}_PROTO"), "tcp".to_owned()));
        vars.push((format!("{base}_PORT"), port.to_string()));
        vars.push((format!("{base}_ADDR"), "10.96.0.10".to_owned()));
    }
    vars
}

#[test]
fn kubernetes_service_links_of_a_release_named_stampede_pass_in_silence() {
    // helm install stampede ./helm/stampede: Services stampede (ws, stomp), stampede-admin and
    // stampede-redis, and the pods keep the default enableServiceLinks.
    let mut vars = service_links("stampede", &[("ws", 8080), ("stomp", 61613)]);
    vars.extend(service_links("stampede-admin", &[("admin", 9090)]));
    vars.extend(service_links("stampede-redis", &[("redis", 6379)]));
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(env.iter().any(|(k, _)| *k == "STAMPEDE_PORT_8080_TCP_ADDR"));
    only_the_stranger_is_reported(&env);
}

#[test]
fn a_lone_port_variable_is_not_taken_for_a_service_link() {
    // Without its Service's _SERVICE_HOST and _SERVICE_PORT, STAMPEDE_PORT is someone's guess.
    assert_eq!(warnings(&[("STAMPEDE_PORT", "8080")]).len(), 1);
    let half = warnings(&[("STAMPEDE_PORT", "8080"), ("STAMPEDE_SERVICE_HOST", "10.0.0.1")]);
    assert_eq!(half.len(), 2, "{half:?}");
    // A near miss stays an error even where service links are present.
    let mut env = service_links("stampede", &[("ws", 8080)]);
    env.push(("STAMPEDE_LISTN".to_owned(), "127.0.0.1:1".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(err(&[], &env).contains("did you mean STAMPEDE_LISTEN?"));
}

#[test]
fn settings_still_load_beside_unknown_variables() {
    let loaded = load_all(&[], &[STRANGER, ("STAMPEDE_MAX_CONNECTIONS", "7")]).unwrap();
    assert_eq!(loaded.config.limits.max_connections, 7);
    assert_eq!(loaded.warnings.len(), 1);
}

#[test]
fn the_environment_debugs_names_without_values() {
    let env = crate::config::Environment::from_pairs([("STAMPEDE_JWT_SECRET", "hunter2-hunter2")]);
    let debug = format!("{env:?}");
    assert!(debug.contains("STAMPEDE_JWT_SECRET") && !debug.contains("hunter2"), "{debug}");
}
