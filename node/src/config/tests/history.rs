//! Tests of the history rules: `--history`, `STAMPEDE_HISTORY` and `[[history]]`, their messages,
//! and which rule applies to a destination.

use std::time::Duration;

use super::{err, ok, TempFile};
use crate::config::{Config, HistoryRule};

#[test]
fn history_from_file() {
    let file = TempFile::new(
        r#"
        [[history]]
        pattern = "/topic/prices/*"
        size = 1000
        ttl = "10m"

        [[history]]
        pattern = "/topic/chat.*"
        size = 50
        "#,
    );
    let c = ok(&["--config", file.path()], &[]);
    assert_eq!(
        c.history,
        vec![
            HistoryRule {
                pattern: "/topic/prices/*".into(),
                size: 1000,
                ttl: Some(Duration::from_secs(600)),
            },
            HistoryRule { pattern: "/topic/chat.*".into(), size: 50, ttl: None },
        ]
    );
}

#[test]
fn history_from_flags_and_environment() {
    let c = ok(&["--history", "/topic/a/*=10,1m", "--history", "/topic/b=5"], &[]);
    assert_eq!(
        c.history,
        vec![
            HistoryRule { pattern: "/topic/a/*".into(), size: 10, ttl: Some(Duration::from_secs(60)) },
            HistoryRule { pattern: "/topic/b".into(), size: 5, ttl: None },
        ]
    );
    let c = ok(&[], &[("STAMPEDE_HISTORY", " /topic/x.*=3,30s ; /topic/y=7;")]);
    assert_eq!(c.history.len(), 2);
    assert_eq!(c.history[0].pattern, "/topic/x.*");
    assert_eq!(c.history[0].ttl, Some(Duration::from_secs(30)));
    assert_eq!(c.history[1].pattern, "/topic/y");
    assert_eq!(c.history[1].size, 7);
}

#[test]
fn history_layers_replace_rather_than_merge() {
    let file = TempFile::new("[[history]]\npattern = \"/topic/file\"\nsize = 1");
    let env = [("STAMPEDE_CONFIG", file.path()), ("STAMPEDE_HISTORY", "/topic/env=2")];
    let patterns = |c: Config| c.history.into_iter().map(|r| r.pattern).collect::<Vec<_>>();
    assert_eq!(patterns(ok(&["--history", "/topic/flag=3"], &env)), ["/topic/flag"]);
    assert_eq!(patterns(ok(&[], &env)), ["/topic/env"]);
    assert_eq!(patterns(ok(&[], &env[..1])), ["/topic/file"]);
}

#[test]
fn bad_history_rules_are_named() {
    let e = err(&["--history", "/queue/a=10"], &[]);
    assert_eq!(
        e,
        "invalid value for history from command line --history: \"/queue/a=10\": \
         pattern \"/queue/a\" must start with \"/topic/\" and name a topic"
    );
    let e = err(&[], &[("STAMPEDE_HISTORY", "/topic/a=0")]);
    assert!(e.contains("environment STAMPEDE_HISTORY") && e.contains("size must be at least 1"), "{e}");
    let e = err(&["--history", "/topic/a"], &[]);
    assert!(e.contains("expected PATTERN=SIZE[,TTL]"), "{e}");
    let e = err(&["--history", "/topic/a=ten"], &[]);
    assert!(e.contains("size \"ten\""), "{e}");
    let e = err(&["--history", "/topic/a=1,forever"], &[]);
    assert!(e.contains("ttl \"forever\""), "{e}");
    let e = err(&["--history", "/topic/=1"], &[]);
    assert!(e.contains("must start with"), "{e}");
}

#[test]
fn bad_history_tables_in_file_are_named() {
    let file = TempFile::new(
        "[[history]]\npattern = \"/topic/a\"\nsize = 1\n\
         [[history]]\npattern = \"/topic/b\"\nsise = 1",
    );
    let e = err(&["--config", file.path()], &[]);
    assert!(e.starts_with("invalid [[history]] entry 2 in config file ") && e.contains("sise"), "{e}");
    let file = TempFile::new("[[history]]\npattern = \"/topic/a\"\nsize = 1\nttl = \"0s\"");
    let e = err(&["--config", file.path()], &[]);
    assert!(e.contains("entry 1") && e.contains("ttl \"0s\""), "{e}");
    let file = TempFile::new("history = \"/topic/a=1\"");
    let e = err(&["--config", file.path()], &[]);
    assert!(e.starts_with("invalid value for history from file "), "{e}");
}

#[test]
fn history_for_returns_the_first_matching_rule() {
    let c = ok(
        &["--history", "/topic/prices/eur=1", "--history", "/topic/prices/*=2", "--history", "/topic/*=3"],
        &[],
    );
    let size = |d: &str| c.history_for(d).map(|r| r.size);
    assert_eq!(size("/topic/prices/eur"), Some(1));
    assert_eq!(size("/topic/prices/usd"), Some(2));
    assert_eq!(size("/topic/chat"), Some(3));
    assert_eq!(size("/queue/jobs"), None);
    assert_eq!(Config::default().history_for("/topic/chat"), None);
}

#[test]
fn frame_rate_burst_must_be_positive() {
    let e = err(&["--frame-rate-burst", "0"], &[]);
    assert!(e.contains("frame-rate-burst") && e.ends_with("must be greater than 0"), "{e}");
}
