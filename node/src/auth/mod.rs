//! Who a client is and what it may do: every authentication and authorization decision of the
//! node is made here, and every refusal is an [`AuthError`] that the session turns into an ERROR.
//!
//! Authentication is on when a users file or a JWT key is configured; otherwise it is off, a
//! client's `login` is taken on trust (the behaviour before this module existed) and the node
//! warns at start-up. With it on, CONNECT must carry either a login and passcode found in the
//! users file ([`users`]) or a JSON Web Token ([`jwt`]): in `passcode`, or, over WebSocket, in
//! the handshake's `Authorization: Bearer` header or its `?token=` query parameter. The result is
//! an [`Identity`]: a user name, roles, the token's own grants, and when it expires.
//!
//! Authorization ([`acl`]) checks each SEND and SUBSCRIBE against allow rules for users and roles
//! from the configuration and from the token. `/user/<name>/...` destinations are private: a
//! client always receives only its own, and sends to another user's only where a rule allows it.
//!
//! One role means something to the node itself: [`RELAY_ROLE`], for a connection that carries
//! other people's messages (a relay), whose refused SENDs are reported without closing it.
//!
//! The same module checks the admin API's bearer token and WebSocket origins.
//!
//! The users file and the JWT keys can be read again while the node runs ([`Auth::reload`], on
//! SIGHUP): a CONNECT from then on is checked against the new ones; sessions already connected
//! keep the identity they have. The access rules, the admin token and the origins come from the
//! configuration and change only with a restart.
//!
//! Layout: `mod.rs` ([`Auth`], [`Identity`], [`AuthError`], loading), `users.rs`, `jwt.rs`,
//! `acl.rs`, and `settings.rs` (the settings above: types, parsers and checks).

pub mod acl;
pub mod jwt;
pub mod settings;
pub mod users;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::destination::Route;
use settings::{OriginPolicy, Secret};

/// The destination a client SENDs a fresh token to, to extend its connection past the expiry of
/// the token it connected with.
pub const REFRESH_DESTINATION: &str = "/auth/refresh";

/// The role of a trusted relay (Spring's `StompBrokerRelay` system session, a gateway): a SEND
/// refused on its connection gets an ERROR that does not close it. Many users' traffic shares
/// such a connection, and closing it for one faulty message cuts them all (Spring calls the
/// broker unavailable and drops every session it relays).
pub const RELAY_ROLE: &str = "relay";

/// The role of an application backend ([`crate::apps`]): it consumes application destinations,
/// SENDs to one session (`x-stampede-session`), and is not bound by the access rules.
pub const BACKEND_ROLE: &str = "backend";

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// How a client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Authentication is off; the login (if any) is taken on trust.
    Trusted,
    /// Login and passcode from the users file.
    Password,
    /// A JSON Web Token.
    Token,
    /// The `app-backend-secret`: an application backend.
    BackendSecret,
}

/// Patterns a token grants beyond its roles (its `stampede` claim).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// Who a session's client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user name: for `/user/` destinations, access rules and CONNECTED's `user-name`.
    /// `None` only when authentication is off and CONNECT had no login.
    pub user: Option<String>,
    pub roles: Vec<String>,
    pub grants: Grants,
    pub method: Method,
    /// When the token expires (its `exp`); `None` for passwords and when authentication is off.
    pub expires: Option<SystemTime>,
}

impl Identity {
    /// A client of a node without authentication.
    pub fn trusted(login: Option<&str>) -> Identity {
        Identity {
            user: login.filter(|l| !l.is_empty()).map(str::to_owned),
            roles: Vec::new(),
            grants: Grants::default(),
            method: Method::Trusted,
            expires: None,
        }
    }

    /// An application backend of the `app-backend-secret`, `login` naming it.
    pub fn backend(login: Option<&str>) -> Identity {
        Identity {
            user: Some(login.filter(|l| !l.is_empty()).unwrap_or(BACKEND_ROLE).to_owned()),
            roles: vec![BACKEND_ROLE.to_owned()],
            grants: Grants::default(),
            method: Method::BackendSecret,
            expires: None,
        }
    }

    /// Whether the client has the [`BACKEND_ROLE`].
    pub fn is_backend(&self) -> bool {
        self.roles.iter().any(|role| role == BACKEND_ROLE)
    }

    pub fn authenticated(&self) -> bool {
        self.method != Method::Trusted
    }

    /// Whether the client has the [`RELAY_ROLE`]: its refused SENDs leave the connection open.
    pub fn is_relay(&self) -> bool {
        self.roles.iter().any(|role| role == RELAY_ROLE)
    }
}

/// What CONNECT (and, over WebSocket, the handshake) offered as proof.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    pub login: Option<&'a str>,
    pub passcode: Option<&'a str>,
    /// From the WebSocket handshake: `Authorization: Bearer`, else `?token=`.
    pub bearer: Option<&'a str>,
}

/// Why a client was refused. The text is the ERROR frame's `message`: it says what failed
/// without saying which part of a login and passcode was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: CONNECT with login and passcode, or a token in passcode or \
         the WebSocket handshake"
    )]
    Required,
    #[error("authentication failed: unknown login or wrong passcode")]
    BadPassword,
    #[error("authentication failed: {0}")]
    BadToken(String),
    #[error("not authorized to {action} {destination}")]
    Forbidden { action: &'static str, destination: String },
    #[error("token expired: SEND a fresh token to {REFRESH_DESTINATION} before the current one expires")]
    Expired,
    #[error("token refresh refused: {0}")]
    Refresh(String),
    /// Refused by the application (a connect or subscribe hook): the text says what and why.
    #[error("{0}")]
    Refused(String),
}

/// Why the security configuration could not be loaded; names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {setting} {}: {source}", .path.display())]
    Read { setting: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid {setting} {}: {reason}", .path.display())]
    Invalid { setting: &'static str, path: PathBuf, reason: String },
    #[error("invalid {setting}: {reason}")]
    Setting { setting: &'static str, reason: String },
}

/// The node's authentication and authorization, loaded from the configuration at start-up.
pub struct Auth {
    /// The users file and the JWT keys, replaced whole by a reload. Read once per CONNECT and
    /// token refresh (never per frame), and never held across an `.await`: the `Arc` is cloned.
    proofs: RwLock<Arc<Proofs>>,
    acl: acl::Acl,
    admin_token: Option<Secret>,
    metrics_public: bool,
    origins: OriginPolicy,
    /// Password hashes verified at once at most: hashing is slow on purpose, and a flood of
    /// CONNECTs must not take every blocking thread.
    hashing: Arc<Semaphore>,
}

/// What a client's proof is checked against: the files a reload reads again.
#[derive(Default)]
struct Proofs {
    users: Option<users::Users>,
    jwt: Option<jwt::Verifier>,
}

impl Proofs {
    fn load(settings: &settings::AuthSettings) -> Result<Proofs, LoadError> {
        let users = settings.users_file.as_deref().map(users::Users::load).transpose()?;
        let jwt = if settings.jwt.enabled() { Some(jwt::Verifier::load(&settings.jwt)?) } else { None };
        Ok(Proofs { users, jwt })
    }
}

/// What [`Auth::reload`] read, for its log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Users in the users file, if one is configured.
    pub users: Option<usize>,
    /// Whether JWT keys (secret, public key, JWKS) are configured and were read.
    pub jwt: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proofs = self.proofs();
        f.debug_struct("Auth")
            .field("users", &proofs.users.as_ref().map(users::Users::len))
            .field("jwt", &proofs.jwt.is_some())
            .field("admin_token", &self.admin_token.is_some())
            .finish()
    }
}

impl Auth {
    /// Reads the users file and JWT keys the configuration names, and checks them.
    pub fn load(config: &Config) -> Result<Auth, LoadError> {
        let settings = &config.auth;
        let proofs = Proofs::load(settings)?;
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
        Ok(Auth {
            proofs: RwLock::new(Arc::new(proofs)),
            acl: acl::Acl::new(settings.acl.clone(), settings.acl_default),
            admin_token: settings.admin_token.clone(),
            metrics_public: settings.metrics_public,
            origins: config.origins.clone(),
            hashing: Arc::new(Semaphore::new(parallel)),
        })
    }

    /// No authentication, no access rules, no admin token, no origin check.
    pub fn off() -> Auth {
        Auth {
            proofs: RwLock::new(Arc::new(Proofs::default())),
            acl: acl::Acl::new(Vec::new(), settings::AclDefault::Allow),
            admin_token: None,
            metrics_public: true,
            origins: OriginPolicy { allowed: None, allow_missing: true },
            hashing: Arc::new(Semaphore::new(1)),
        }
    }

    /// Reads the users file and the JWT keys of `config` again and, if all of them load, checks
    /// every CONNECT from now on against them. On an error nothing changes: the node keeps what
    /// it had. Blocking (file reads): call it off the runtime's workers.
    pub fn reload(&self, config: &Config) -> Result<Reloaded, LoadError> {
        let proofs = Proofs::load(&config.auth)?;
        let reloaded =
            Reloaded { users: proofs.users.as_ref().map(users::Users::len), jwt: proofs.jwt.is_some() };
        *self.proofs.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(proofs);
        Ok(reloaded)
    }

    /// The users and keys in force.
    fn proofs(&self) -> Arc<Proofs> {
        self.proofs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        let proofs = self.proofs();
        proofs.users.is_some() || proofs.jwt.is_some()
    }

    /// Decides who a connecting client is.
    ///
    /// With JWTs configured, a token is taken from `passcode` when it looks like a JWT (any
    /// passcode, without a users file), else from the handshake. Otherwise the login and passcode
    /// are checked against the users file. A `login` next to a token is ignored: the token names
    /// the user.
    pub async fn authenticate(&self, credentials: Credentials<'_>) -> Result<Identity, AuthError> {
        let proofs = self.proofs();
        if proofs.users.is_none() && proofs.jwt.is_none() {
            return Ok(Identity::trusted(credentials.login));
        }
        if let Some(verifier) = &proofs.jwt {
            let token = credentials
                .passcode
                .filter(|p| proofs.users.is_none() || jwt::looks_like_jwt(p))
                .or(credentials.bearer);
            if let Some(token) = token {
                return verifier.verify(token);
            }
        }
        match (&proofs.users, credentials.login, credentials.passcode) {
            (Some(users), Some(login), Some(passcode)) => {
                let _permit = self.hashing.acquire().await.map_err(|_| AuthError::BadPassword)?;
                users.verify(login, passcode).await
            }
            _ => Err(AuthError::Required),
        }
    }

    /// A fresh token for a session that connected with one: it must verify like a new one and
    /// name the same user. Its roles and grants replace the old ones.
    pub fn refresh(&self, current: &Identity, token: &str) -> Result<Identity, AuthError> {
        let proofs = self.proofs();
        let Some(verifier) = proofs.jwt.as_ref().filter(|_| current.method == Method::Token) else {
            return Err(AuthError::Refresh("this connection did not authenticate with a token".into()));
        };
        let fresh = verifier.verify(token.trim()).map_err(|e| match e {
            AuthError::BadToken(why) => AuthError::Refresh(why),
            other => other,
        })?;
        if fresh.user != current.user {
            return Err(AuthError::Refresh("the new token names another user".into()));
        }
        Ok(fresh)
    }

    /// How long after `expires` a token is still honoured (`jwt-leeway`).
    pub fn leeway(&self) -> Duration {
        self.proofs().jwt.as_ref().map_or(Duration::ZERO, jwt::Verifier::leeway)
    }

    /// May this client SEND to `route`?
    pub fn may_publish(&self, identity: &Identity, route: &Route) -> Result<(), AuthError> {
        self.acl.may_publish(identity, route)
    }

    /// May this client SUBSCRIBE to `route`?
    pub fn may_subscribe(&self, identity: &Identity, route: &Route) -> Result<(), AuthError> {
        self.acl.may_subscribe(identity, route)
    }

    /// Whether an admin request for `path` with this `Authorization` header may proceed.
    /// `/healthz` and `/readyz` are always open (probes), `/metrics` when `metrics-public`.
    pub fn admin_allows(&self, path: &str, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.admin_token else { return true };
        if matches!(path, "/healthz" | "/readyz") || (path == "/metrics" && self.metrics_public) {
            return true;
        }
        let offered = authorization.and_then(bearer);
        offered.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.expose().as_bytes()))
    }

    pub fn admin_token_set(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Whether a WebSocket handshake with this `Origin` (or none) may proceed.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        origin_allowed(&self.origins, origin)
    }

    pub fn origin_check_enabled(&self) -> bool {
        self.origins.allowed.is_some()
    }
}

/// Exact (ASCII case-insensitive) matches against the allowlist; `*` only when listed.
pub fn origin_allowed(policy: &OriginPolicy, origin: Option<&str>) -> bool {
    let Some(allowed) = &policy.allowed else { return true };
    match origin {
        None => policy.allow_missing,
        Some(origin) => allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `token` parameter of a URL query, percent-decoded.
pub fn query_token(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "token" && !value.is_empty()).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user name that is safe inside `/user/<name>/...` and in access rules: no `/`, no `*`, no
/// whitespace or control characters, at most 256 bytes.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.chars().any(|c| c == '/' || c == '*' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer("bearer  tok "), Some("tok"));
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn query_tokens_are_found_and_decoded() {
        assert_eq!(query_token("token=a.b.c").as_deref(), Some("a.b.c"));
        assert_eq!(query_token("x=1&token=a%2Eb%2ec&y=2").as_deref(), Some("a.b.c"));
        assert_eq!(query_token("tokens=a"), None);
        assert_eq!(query_token("token="), None);
        assert_eq!(query_token("token=%zz%").as_deref(), Some("%zz%"));
        assert_eq!(query_token("token=%4").as_deref(), Some("%4"));
    }

    #[test]
    fn secrets_compare_in_full() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokem"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }

    #[test]
    fn user_names_that_would_cross_into_another_users_destinations_are_invalid() {
        assert!(valid_user_name("ann"));
        assert!(valid_user_name("ann@example.com"));
        for bad in ["", "ann/queue", "a*", "a b", "a\u{0}", &"x".repeat(257)] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn origins_match_exactly_unless_star() {
        let policy = |allowed: Option<&[&str]>, allow_missing| OriginPolicy {
            allowed: allowed.map(|a| a.iter().map(|s| s.to_string()).collect()),
            allow_missing,
        };
        let open = policy(None, false);
        assert!(origin_allowed(&open, Some("https://evil.example")) && origin_allowed(&open, None));
        let strict = policy(Some(&["https://app.example.com"]), false);
        assert!(origin_allowed(&strict, Some("https://app.example.com")));
        assert!(origin_allowed(&strict, Some("HTTPS://APP.example.com")));
        assert!(!origin_allowed(&strict, Some("https://app.example.com.evil.io")));
        assert!(!origin_allowed(&strict, Some("http://app.example.com")));
        assert!(!origin_allowed(&strict, Some("null")));
        assert!(!origin_allowed(&strict, None));
        assert!(origin_allowed(&policy(Some(&["https://a.io"]), true), None));
        assert!(origin_allowed(&policy(Some(&["*"]), false), Some("https://any.where")));
        assert!(!origin_allowed(&policy(Some(&["*"]), false), None));
    }

    #[tokio::test]
    async fn authentication_off_trusts_the_login() {
        let auth = Auth::off();
        let id = auth.authenticate(Credentials { login: Some("ann"), ..Default::default() }).await.unwrap();
        assert_eq!((id.user.as_deref(), id.method), (Some("ann"), Method::Trusted));
        let id = auth.authenticate(Credentials::default()).await.unwrap();
        assert_eq!(id.user, None);
        assert!(auth.admin_allows("/api/v1/publish", None));
    }
}
