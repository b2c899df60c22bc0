//! Tests of the `presence` setting: its layers, its message, and which destinations it names.

use super::{err, load_all, ok, TempFile};
use crate::config::Mode;

#[test]
fn presence_patterns_from_every_layer() {
    assert!(ok(&[], &[]).presence.is_empty(), "none by default");
    let file = TempFile::new("presence = [\"/topic/chat.*\", \"/user/*/queue/status\"]\n");
    let c = ok(&["--config", file.path()], &[]);
    assert_eq!(c.presence, ["/topic/chat.*", "/user/*/queue/status"]);
    assert!(c.presence_for("/topic/chat.room1"));
    assert!(c.presence_for("/user/ann/queue/status"));
    assert!(!c.presence_for("/topic/news"));
    let c = ok(&["--config", file.path()], &[("STAMPEDE_PRESENCE", "/queue/a, /topic/b")]);
    assert_eq!(c.presence, ["/queue/a", "/topic/b"]);
    let c = ok(&["--presence", "/topic/x"], &[("STAMPEDE_PRESENCE", "/queue/a")]);
    assert_eq!(c.presence, ["/topic/x"]);
}

#[test]
fn a_presence_pattern_outside_the_destination_kinds_is_refused() {
    let e = err(&["--presence", "/topic/a,chat.*"], &[]);
    assert!(e.contains("presence") && e.contains("--presence") && e.contains("\"chat.*\""), "{e}");
    assert!(e.contains("must start with /topic/, /queue/ or /user/"), "{e}");
    let e = err(&[], &[("STAMPEDE_PRESENCE", "/presence/topic/a")]);
    assert!(e.contains("STAMPEDE_PRESENCE"), "{e}");
}

#[test]
fn check_config_prints_the_presence_patterns() {
    let loaded = load_all(&["check-config", "--presence", "/topic/chat.*"], &[]).unwrap();
    let Mode::CheckConfig { effective } = loaded.mode else { panic!("check-config mode") };
    assert!(effective.contains("presence = \"/topic/chat.*\""), "{effective}");
    let loaded = load_all(&["check-config"], &[]).unwrap();
    let Mode::CheckConfig { effective } = loaded.mode else { panic!("check-config mode") };
    assert!(effective.contains("# presence: none"), "{effective}");
}
