//! Tests of the queue rules: `--queue`, `STAMPEDE_QUEUE` and `[[queue]]`, their messages, and
//! which rule gives a queue its lifetime.

use std::time::Duration;

use super::{err, load_all, ok, TempFile};
use crate::config::{Config, Mode, QueueLifetime, QueueRule};

fn rule(pattern: &str, expires: Option<u64>, auto_delete: bool) -> QueueRule {
    let lifetime = QueueLifetime { expires: expires.map(Duration::from_secs), auto_delete };
    QueueRule { pattern: pattern.into(), lifetime }
}

#[test]
fn queue_rules_from_file() {
    let file = TempFile::new(
        r#"
        [[queue]]
        pattern = "/queue/*-user*"
        expires = "10m"
        auto-delete = true

        [[queue]]
        pattern = "/queue/reply.*"
        auto-delete = true

        [[queue]]
        pattern = "/queue/jobs.*"
        expires = "1h"
        "#,
    );
    let c = ok(&["--config", file.path()], &[]);
    assert_eq!(
        c.queue_rules,
        vec![
            rule("/queue/*-user*", Some(600), true),
            rule("/queue/reply.*", None, true),
            rule("/queue/jobs.*", Some(3600), false),
        ]
    );
}

#[test]
fn queue_rules_from_flags_and_environment() {
    let c = ok(&["--queue", "/queue/a/*=1m,auto-delete", "--queue", "/queue/b=auto-delete"], &[]);
    assert_eq!(c.queue_rules, vec![rule("/queue/a/*", Some(60), true), rule("/queue/b", None, true)]);
    let c = ok(&[], &[("STAMPEDE_QUEUE", " /queue/x.*=30s ; /queue/y=auto-delete,2s;")]);
    assert_eq!(c.queue_rules, vec![rule("/queue/x.*", Some(30), false), rule("/queue/y", Some(2), true)]);
}

#[test]
fn queue_layers_replace_rather_than_merge() {
    let file = TempFile::new("[[queue]]\npattern = \"/queue/file\"\nexpires = \"1s\"");
    let env = [("STAMPEDE_CONFIG", file.path()), ("STAMPEDE_QUEUE", "/queue/env=2s")];
    let patterns = |c: Config| c.queue_rules.into_iter().map(|r| r.pattern).collect::<Vec<_>>();
    assert_eq!(patterns(ok(&["--queue", "/queue/flag=3s"], &env)), ["/queue/flag"]);
    assert_eq!(patterns(ok(&[], &env)), ["/queue/env"]);
    assert_eq!(patterns(ok(&[], &env[..1])), ["/queue/file"]);
}

#[test]
fn bad_queue_rules_are_named() {
    let e = err(&["--queue", "/topic/a=10s"], &[]);
    assert_eq!(
        e,
        "invalid value for queue from command line --queue: \"/topic/a=10s\": \
         pattern \"/topic/a\" must start with \"/queue/\" and name a queue"
    );
    let e = err(&[], &[("STAMPEDE_QUEUE", "/queue/a=0s")]);
    assert!(e.contains("environment STAMPEDE_QUEUE") && e.contains("expires \"0s\""), "{e}");
    let e = err(&["--queue", "/queue/a"], &[]);
    assert!(e.contains("expected PATTERN=EXPIRES[,auto-delete]"), "{e}");
    let e = err(&["--queue", "/queue/a=soon"], &[]);
    assert!(e.contains("expires \"soon\""), "{e}");
    let e = err(&["--queue", "/queue/a=1s,2s"], &[]);
    assert!(e.contains("given twice"), "{e}");
    let e = err(&["--queue", "/queue/a=auto-delete,auto-delete"], &[]);
    assert!(e.contains("given twice"), "{e}");
}

#[test]
fn bad_queue_tables_in_file_are_named() {
    let file = TempFile::new(
        "[[queue]]\npattern = \"/queue/a\"\nexpires = \"1s\"\n[[queue]]\npattern = \"/queue/b\"",
    );
    let e = err(&["--config", file.path()], &[]);
    assert!(
        e.starts_with("invalid [[queue]] entry 2 in config file ")
            && e.contains("needs expires, auto-delete"),
        "{e}"
    );
    let file = TempFile::new("[[queue]]\npattern = \"/queue/a\"\nexpire = \"1s\"");
    let e = err(&["--config", file.path()], &[]);
    assert!(e.contains("entry 1") && e.contains("expire"), "{e}");
}

#[test]
fn queue_lifetime_is_the_first_matching_rules() {
    let c = ok(&["--queue", "/queue/a-user*=1s", "--queue", "/queue/*=auto-delete"], &[]);
    assert_eq!(c.queue_lifetime("/queue/a-user42").expires, Some(Duration::from_secs(1)));
    assert!(!c.queue_lifetime("/queue/a-user42").auto_delete);
    assert!(c.queue_lifetime("/queue/jobs").auto_delete);
    assert!(!Config::default().queue_lifetime("/queue/jobs").is_some());
}

#[test]
fn check_config_prints_queue_rules() {
    let loaded =
        load_all(&["check-config", "--queue", "/queue/*-user*=10m,auto-delete"], &[]).expect("valid");
    let Mode::CheckConfig { effective } = loaded.mode else { panic!("not check-config") };
    assert!(
        effective.contains(
            "# queue: 1 from command line --queue\n[[queue]]\npattern = \"/queue/*-user*\"\nexpires = \"10m\"\nauto-delete = true\n"
        ),
        "{effective}"
    );
}
