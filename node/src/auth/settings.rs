//! The settings of authentication, authorization and WebSocket origins: their types (the
//! `auth` and `origins` fields of [`Config`](crate::config::Config)), their parsers, and the
//! checks that span them, as each feature validates its own options. The configuration's
//! [`Layers`] supply the text and name where it came from; [`resolve`] and [`resolve_origins`]
//! are called by [`Layers::resolve`]. The files these settings name are loaded by
//! [`Auth`](super::Auth) before the node binds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::layers::{ConfigFile, Layers};
use crate::config::parse::{boolean, duration, list, path};
use crate::config::settings::{
    ACL, ACL_DEFAULT, ADMIN_TOKEN, JWT_ALGORITHMS, JWT_AUDIENCE, JWT_ISSUER, JWT_JWKS, JWT_LEEWAY,
    JWT_PUBLIC_KEY, JWT_ROLES_CLAIM, JWT_SECRET, JWT_USER_CLAIM, METRICS_PUBLIC, USERS_FILE,
    WS_ALLOW_NO_ORIGIN, WS_ORIGINS,
};
use crate::config::ConfigError;

// === Types ===

/// A secret setting (a key, a token). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Authentication and authorization. With neither `users_file` nor a JWT key set, authentication
/// is off: every client may connect, its `login` is taken on trust, and it may do everything.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthSettings {
    /// `name:hash[:role,role]` lines; hashes in argon2 (PHC) or bcrypt form.
    pub users_file: Option<PathBuf>,
    pub jwt: JwtSettings,
    /// Allow rules, in order; see [`AclRule`].
    pub acl: Vec<AclRule>,
    /// What an authenticated client may do where no rule allows it.
    pub acl_default: AclDefault,
    /// Bearer token the admin API requires (all but `/healthz`, `/readyz`, and `/metrics` when
    /// `metrics_public`); `None` = the admin API is open.
    pub admin_token: Option<Secret>,
    /// Serve `/metrics` without the admin token.
    pub metrics_public: bool,
}

impl AuthSettings {
    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.users_file.is_some() || self.jwt.enabled()
    }
}

/// JSON Web Token verification.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtSettings {
    /// HS256/384/512 shared key (at least 32 bytes).
    pub secret: Option<Secret>,
    /// PEM file with an RSA (RS*, PS*) or EC (ES256, ES384) public key.
    pub public_key: Option<PathBuf>,
    /// JWKS file (a JSON `{"keys": [...]}`); keys are chosen by the token's `kid`.
    pub jwks: Option<PathBuf>,
    /// Algorithms accepted; `None` = the default algorithm of each configured key.
    pub algorithms: Option<Vec<jsonwebtoken::Algorithm>>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Accepted `aud` values; `None` = not checked.
    pub audience: Option<Vec<String>>,
    /// Accepted `iss` values; `None` = not checked.
    pub issuer: Option<Vec<String>>,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claim listing the roles; dots reach into objects (`realm_access.roles`).
    pub roles_claim: String,
}

impl JwtSettings {
    /// Whether any verification key is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some() || self.public_key.is_some() || self.jwks.is_some()
    }
}

/// Who an access rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// Every authenticated client.
    Anyone,
    User(String),
    Role(String),
}

/// Allows `subject` to publish to destinations matching `publish` and subscribe to those matching
/// `subscribe` (patterns: `*` matches any run of characters, `/` included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRule {
    pub subject: Subject,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What an authenticated client may do where no rule allows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclDefault {
    Allow,
    Deny,
}

/// Which `Origin` a WebSocket handshake may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Exact origins (`https://app.example.com`), lower-cased; `*` allows any. `None` = no check.
    pub allowed: Option<Vec<String>>,
    /// With `allowed` set, accept handshakes that carry no `Origin` (non-browser clients).
    pub allow_missing: bool,
}

impl AclRule {
    /// Checks a rule's parts; the error is the reason, for the caller to place.
    fn build(subject: Subject, publish: Vec<String>, subscribe: Vec<String>) -> Result<AclRule, String> {
        if publish.is_empty() && subscribe.is_empty() {
            return Err("a rule must allow publish or subscribe to at least one pattern".to_owned());
        }
        if let Subject::User(name) | Subject::Role(name) = &subject {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("name {name:?}: expected a non-empty name without spaces"));
            }
        }
        for pattern in publish.iter().chain(&subscribe) {
            if !pattern.starts_with('/') || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "pattern {pattern:?}: expected a destination pattern starting with /, like /topic/chat.*"
                ));
            }
        }
        Ok(AclRule { subject, publish, subscribe })
    }

    /// Whether the rule applies to a client with this user name and these roles.
    pub fn applies_to(&self, user: &str, roles: &[String]) -> bool {
        match &self.subject {
            Subject::Anyone => true,
            Subject::User(name) => name == user,
            Subject::Role(role) => roles.iter().any(|r| r == role),
        }
    }
}

// === Resolution ===

/// Authentication, access rules and the admin token.
pub(crate) fn resolve(layers: &Layers<'_>) -> Result<AuthSettings, ConfigError> {
    let secret = layers.optional(&JWT_SECRET, jwt_secret)?.map(|r| r.value);
    let jwt = JwtSettings {
        secret,
        public_key: layers.optional(&JWT_PUBLIC_KEY, path)?.map(|r| r.value),
        jwks: layers.optional(&JWT_JWKS, path)?.map(|r| r.value),
        algorithms: layers.optional(&JWT_ALGORITHMS, jwt_algorithms)?.map(|r| r.value),
        leeway: layers.value(&JWT_LEEWAY, duration)?.value,
        audience: layers.optional(&JWT_AUDIENCE, list)?.map(|r| r.value),
        issuer: layers.optional(&JWT_ISSUER, list)?.map(|r| r.value),
        user_claim: layers.value(&JWT_USER_CLAIM, claim)?.value,
        roles_claim: layers.value(&JWT_ROLES_CLAIM, claim)?.value,
    };
    let users_file = layers.optional(&USERS_FILE, path)?.map(|r| r.value);
    let acl = layers.rules(ACL, parse_acl_rule, file_rules)?;
    let auth = AuthSettings {
        users_file,
        jwt,
        acl: acl.value,
        acl_default: layers.value(&ACL_DEFAULT, acl_default)?.value,
        admin_token: layers.optional(&ADMIN_TOKEN, admin_token)?.map(|r| r.value),
        metrics_public: layers.value(&METRICS_PUBLIC, boolean)?.value,
    };
    if !auth.enabled() && !auth.acl.is_empty() {
        return Err(ConfigError::Needs {
            setting: acl.setting,
            origin: acl.origin,
            reason: "needs authentication: set users-file, jwt-secret, jwt-public-key or jwt-jwks \
                 (without it a client's login is not checked, so rules on it mean nothing)",
        });
    }
    if !auth.jwt.enabled() {
        // Each was read above, so reading its text again cannot fail.
        let jwt_only = [
            (JWT_ALGORITHMS.name, layers.text(&JWT_ALGORITHMS)?),
            (JWT_AUDIENCE.name, layers.text(&JWT_AUDIENCE)?),
            (JWT_ISSUER.name, layers.text(&JWT_ISSUER)?),
            (JWT_USER_CLAIM.name, layers.text(&JWT_USER_CLAIM)?),
            (JWT_ROLES_CLAIM.name, layers.text(&JWT_ROLES_CLAIM)?),
        ];
        if let Some((setting, Some((_, origin)))) = jwt_only.into_iter().find(|(_, text)| text.is_some()) {
            return Err(ConfigError::Needs {
                setting,
                origin,
                reason: "needs a JWT key: set jwt-secret, jwt-public-key or jwt-jwks",
            });
        }
    }
    Ok(auth)
}

/// Which browser origins may open a WebSocket.
pub(crate) fn resolve_origins(layers: &Layers<'_>) -> Result<OriginPolicy, ConfigError> {
    Ok(OriginPolicy {
        allowed: layers.optional(&WS_ORIGINS, origins)?.map(|r| r.value),
        allow_missing: layers.value(&WS_ALLOW_NO_ORIGIN, boolean)?.value,
    })
}

/// One `[[acl]]` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclTable {
    user: Option<String>,
    role: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// The `[[acl]]` tables of the config file.
fn file_rules(file: &ConfigFile, value: &toml::Value) -> Result<Vec<AclRule>, ConfigError> {
    let fail = |entry: usize, reason: String| ConfigError::FileAcl {
        path: file.path.clone(),
        entry: entry + 1,
        reason,
    };
    file.tables(value, ACL, "user or role, publish and subscribe", fail, |table: AclTable| {
        let subject = match (table.user, table.role) {
            (Some(_), Some(_)) => return Err("give user or role, not both".to_owned()),
            (Some(user), None) => Subject::User(user),
            (None, Some(role)) => Subject::Role(role),
            (None, None) => Subject::Anyone,
        };
        AclRule::build(subject, table.publish, table.subscribe)
    })
}

// === Parsers ===
// Each takes trimmed text and returns the value, or what it expected.

/// Shortest HMAC key accepted: RFC 7518 asks for a key at least as long as the hash (256 bits).
const MIN_JWT_SECRET: usize = 32;

fn jwt_secret(text: &str) -> Result<Secret, String> {
    if text.len() < MIN_JWT_SECRET {
        return Err(format!("must be at least {MIN_JWT_SECRET} bytes (RFC 7518: as long as the hash)"));
    }
    Ok(Secret::new(text))
}

fn admin_token(text: &str) -> Result<Secret, String> {
    if text.len() < 16 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected at least 16 characters without spaces".to_owned());
    }
    Ok(Secret::new(text))
}

/// Algorithms the broker verifies; `none` is refused by name.
fn jwt_algorithms(text: &str) -> Result<Vec<jsonwebtoken::Algorithm>, String> {
    use jsonwebtoken::Algorithm::*;
    const ACCEPTED: [jsonwebtoken::Algorithm; 11] =
        [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384];
    let mut out = Vec::new();
    for item in list(text)? {
        if item.eq_ignore_ascii_case("none") {
            return Err("none (unsigned tokens) is never accepted".to_owned());
        }
        let alg = item
            .to_ascii_uppercase()
            .parse::<jsonwebtoken::Algorithm>()
            .ok()
            .filter(|alg| ACCEPTED.contains(alg))
            .ok_or_else(|| {
                format!(
                    "unknown algorithm {item:?}: expected HS256, HS384, HS512, RS256, RS384, RS512, \
                     PS256, PS384, PS512, ES256 or ES384"
                )
            })?;
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

fn claim(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.split('.').all(|part| !part.is_empty())
        && text.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected a claim name, dots separating nested names".to_owned())
    }
}

fn acl_default(text: &str) -> Result<AclDefault, String> {
    match text.to_ascii_lowercase().as_str() {
        "allow" => Ok(AclDefault::Allow),
        "deny" => Ok(AclDefault::Deny),
        _ => Err("expected allow or deny".to_owned()),
    }
}

/// `*`, or `scheme://host[:port]` without a path, as browsers send it; kept lower-cased.
fn origins(text: &str) -> Result<Vec<String>, String> {
    list(text)?
        .into_iter()
        .map(|origin| {
            if origin == "*" {
                return Ok(origin);
            }
            let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                    && !rest.is_empty()
                    && !rest.contains(['/', '?', '#', '*', ' '])
            });
            if valid {
                Ok(origin.to_ascii_lowercase())
            } else {
                Err(format!(
                    "origin {origin:?}: expected scheme://host[:port] like https://app.example.com, or *"
                ))
            }
        })
        .collect()
}

/// `WHO ACTIONS PATTERN`, as `--acl` and `STAMPEDE_ACL` take it.
fn parse_acl_rule(text: &str) -> Result<AclRule, String> {
    let expected =
        || "expected WHO ACTIONS PATTERN like \"role:traders publish,subscribe /topic/prices/*\"".to_owned();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [who, actions, pattern] = parts[..] else { return Err(expected()) };
    let subject = match who.split_once(':') {
        None if who == "*" => Subject::Anyone,
        Some(("user", name)) if !name.is_empty() => Subject::User(name.to_owned()),
        Some(("role", name)) if !name.is_empty() => Subject::Role(name.to_owned()),
        _ => return Err(format!("who {who:?}: expected user:NAME, role:NAME or *")),
    };
    let (mut publish, mut subscribe) = (Vec::new(), Vec::new());
    for action in actions.split(',') {
        match action {
            "publish" => publish.push(pattern.to_owned()),
            "subscribe" => subscribe.push(pattern.to_owned()),
            other => {
                return Err(format!("action {other:?}: expected publish, subscribe or publish,subscribe"))
            }
        }
    }
    AclRule::build(subject, publish, subscribe)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::tests::{err, ok, TempFile};

    #[test]
    fn security_settings_from_every_layer() {
        let file = TempFile::new(
            r#"
            users-file = "/etc/stampede/users"
            jwt-public-key = "/etc/stampede/jwt.pem"
            jwt-algorithms = ["RS256", "es256"]
            jwt-audience = ["stampede", "chat"]
            ws-origins = ["https://App.example.com", "http://localhost:3000"]
            ws-allow-no-origin = true
            max-connections-per-ip = 20
            "#,
        );
        let c = ok(
            &["--config", file.path(), "--jwt-leeway", "5s", "--max-frame-rate", "100"],
            &[("STAMPEDE_JWT_ISSUER", "https://idp"), ("STAMPEDE_ACL_DEFAULT", "allow")],
        );
        assert_eq!(c.auth.users_file, Some(PathBuf::from("/etc/stampede/users")));
        assert_eq!(c.auth.jwt.public_key, Some(PathBuf::from("/etc/stampede/jwt.pem")));
        assert_eq!(
            c.auth.jwt.algorithms,
            Some(vec![jsonwebtoken::Algorithm::RS256, jsonwebtoken::Algorithm::ES256])
        );
        assert_eq!(c.auth.jwt.audience, Some(vec!["stampede".to_owned(), "chat".to_owned()]));
        assert_eq!(c.auth.jwt.issuer, Some(vec!["https://idp".to_owned()]));
        assert_eq!(c.auth.jwt.leeway, Duration::from_secs(5));
        assert_eq!(c.auth.acl_default, AclDefault::Allow);
        assert_eq!(
            c.origins,
            OriginPolicy {
                allowed: Some(vec!["https://app.example.com".into(), "http://localhost:3000".into()]),
                allow_missing: true,
            }
        );
        assert_eq!((c.limits.max_connections_per_ip, c.limits.max_frame_rate), (20, 100));
        assert!(c.auth.enabled());
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let secret = "s".repeat(32);
        let token = "admin-token-0123456789";
        let c = ok(&["--jwt-secret", &secret, "--admin-token", token], &[]);
        assert_eq!(c.auth.jwt.secret.as_ref().map(Secret::expose), Some(secret.as_str()));
        let debug = format!("{c:?}");
        assert!(!debug.contains(&secret) && !debug.contains(token), "{debug}");
        let e = err(&["--jwt-secret", "short"], &[]);
        assert!(e.starts_with("invalid value for jwt-secret") && e.contains("at least 32 bytes"), "{e}");
        let e = err(&[], &[("STAMPEDE_ADMIN_TOKEN", "short")]);
        assert!(e.contains("admin-token") && e.contains("at least 16 characters"), "{e}");
    }

    #[test]
    fn unsigned_and_unknown_algorithms_are_refused() {
        let secret = "s".repeat(32);
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "HS256,none"], &[]);
        assert!(e.contains("none (unsigned tokens) is never accepted"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "HS1"], &[]);
        assert!(e.contains("unknown algorithm \"HS1\""), "{e}");
        let e = err(&["--jwt-secret", &secret, "--jwt-algorithms", "EdDSA"], &[]);
        assert!(e.contains("unknown algorithm"), "{e}");
    }

    #[test]
    fn jwt_rules_without_a_key_are_refused() {
        let e = err(&["--jwt-audience", "x"], &[]);
        assert_eq!(
            e,
            "jwt-audience (from command line --jwt-audience) needs a JWT key: set jwt-secret, \
             jwt-public-key or jwt-jwks"
        );
    }

    #[test]
    fn origins_are_exact_or_star() {
        let c = ok(&["--ws-origins", "*"], &[]);
        assert_eq!(c.origins.allowed, Some(vec!["*".to_owned()]));
        for bad in ["app.example.com", "https://app.example.com/", "https://*.example.com", "https://"] {
            let e = err(&["--ws-origins", bad], &[]);
            assert!(e.contains("expected scheme://host[:port]"), "{bad}: {e}");
        }
        let e = err(&["--ws-allow-no-origin", "maybe"], &[]);
        assert!(e.contains("expected true or false"), "{e}");
    }

    #[test]
    fn acl_rules_from_every_layer() {
        let secret = "s".repeat(32);
        let file = TempFile::new(
            r#"
            [[acl]]
            role = "traders"
            publish = ["/queue/orders"]
            subscribe = ["/topic/prices/*"]

            [[acl]]
            subscribe = ["/topic/public.*"]
            "#,
        );
        let c = ok(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert_eq!(
            c.auth.acl,
            vec![
                AclRule {
                    subject: Subject::Role("traders".into()),
                    publish: vec!["/queue/orders".into()],
                    subscribe: vec!["/topic/prices/*".into()],
                },
                AclRule {
                    subject: Subject::Anyone,
                    publish: vec![],
                    subscribe: vec!["/topic/public.*".into()]
                },
            ]
        );
        let env = [
            ("STAMPEDE_CONFIG", file.path()),
            ("STAMPEDE_ACL", "user:ann publish /user/*; * subscribe /topic/x"),
        ];
        let c = ok(&["--jwt-secret", &secret], &env);
        assert_eq!(c.auth.acl.len(), 2, "the environment replaces the file");
        assert_eq!(c.auth.acl[0].subject, Subject::User("ann".into()));
        let c = ok(&["--jwt-secret", &secret, "--acl", "role:ops publish,subscribe /queue/*"], &env);
        assert_eq!(c.auth.acl.len(), 1, "flags replace the environment");
        assert_eq!((c.auth.acl[0].publish.len(), c.auth.acl[0].subscribe.len()), (1, 1));
    }

    #[test]
    fn bad_acl_rules_are_named() {
        let secret = "s".repeat(32);
        let e = err(&["--jwt-secret", &secret, "--acl", "role:x read /topic/a"], &[]);
        assert!(
            e.starts_with("invalid value for acl from command line --acl") && e.contains("action \"read\""),
            "{e}"
        );
        let e = err(&["--jwt-secret", &secret, "--acl", "group:x publish /topic/a"], &[]);
        assert!(e.contains("expected user:NAME, role:NAME or *"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--acl", "* publish topic/a"], &[]);
        assert!(e.contains("starting with /"), "{e}");
        let e = err(&["--jwt-secret", &secret, "--acl", "* publish"], &[]);
        assert!(e.contains("expected WHO ACTIONS PATTERN"), "{e}");
        let file = TempFile::new("[[acl]]\nuser = \"a\"\nrole = \"b\"\npublish = [\"/topic/a\"]");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("invalid [[acl]] entry 1") && e.contains("not both"), "{e}");
        let file = TempFile::new("[[acl]]\nrole = \"b\"");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("at least one pattern"), "{e}");
        let file = TempFile::new("[[acl]]\nrole = \"b\"\npublsh = [\"/topic/a\"]");
        let e = err(&["--config", file.path(), "--jwt-secret", &secret], &[]);
        assert!(e.contains("entry 1") && e.contains("publsh"), "{e}");
    }

    #[test]
    fn acl_rules_without_authentication_are_refused() {
        let e = err(&["--acl", "* publish /topic/a"], &[]);
        assert!(e.starts_with("acl (from command line --acl) needs authentication"), "{e}");
    }
}
