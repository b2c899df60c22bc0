//! Harness of the security tests (`security.rs`, `adversarial.rs`, `fanout.rs`, `fuzz.rs`),
//! independent of `support/`: a node on ephemeral ports ([`TestNode`]), a STOMP client over
//! TCP, TLS, WebSocket and secure WebSocket that can also misbehave ([`Client`]), the key
//! material of the tests ([`Keys`]: a users file, JWT keys and a JWKS, a TLS certificate),
//! token minting ([`Token`]), and a [`Bystander`]: a subscriber that must receive every message
//! a publisher sends while another client attacks the node.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
pub use common::{eventually, http_request, init_tracing, metric, HttpResponse};

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stampede::config::{AclDefault, AclRule, Config, OriginPolicy, Secret, Subject, TlsFiles};
use stampede::stomp::{encode, Command, Decoded, Decoder, Frame, Limits, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(250);

/// The HS256 key of the tests.
pub const JWT_SECRET: &str = "stampede-test-secret-0123456789abcdef";
/// The admin token of the tests.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
pub const AUDIENCE: &str = "stampede";
pub const ISSUER: &str = "https://idp.test";
pub const ORIGIN: &str = "https://app.example.com";
/// Passwords of the users file (user = password + "-pw").
pub const USERS: [(&str, &str); 4] =
    [("ann", "ann-pw"), ("bob", "bob-pw"), ("ops", "ops-pw"), ("witness", "witness-pw")];

// === key material ===

/// A directory in the temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name =
            format!("stampede-security-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A 2048-bit RSA key for signing test tokens (ring cannot generate RSA keys). Test use only.
pub const RSA_PRIVATE_PEM: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEogIBAAKCAQEAzvmV+SGTSvnq0tzwoDU2A+ve3i0rTV9spjJ8LtIMEdGjdG/a\n\
Tuy0JQFc4BdhK+25xjrBBoIHWyFEBNzdRbSU/b39T0XmRJP/7GiMTE4dIJNAhx8q\n\
9U1GzBmJwEEasQ6fBgJXuhURB1BcvlABW5nPTcI2WPulFN4T40BvYqn8D95oUuaU\n\
xoHZ6KoMZ8W57Rx0utMeVPwJGylLBE3HqfsJUzLMMOvYkZ+GWzTiP7pp7Goy7H+m\n\
VQjfphXzwrWSH379L/Dm7otqRsjsGKONoEFTja304LFSPSfBiEEdU56J/wunu/Dw\n\
lbDtVpQ0S4TgC3SXNCNsdKLpySe/PW3YC3aaHQIDAQABAoIBAGdupPr2Q3Rxhl9Q\n\
GFQHo3G8OwkOy5gD+vjnO9XuFCgHesbiateMRM5FaxN1u5LHX1Jn5DSLYH+zFRnV\n\
AiMmhlpzypYGGXfl+jw7Vvl/A+FWlSWxdrdVoe63SHayUlNvOhs3qn2Mr5DXITHe\n\
K3+KUuXKC3zWbP4LqSak+cT1q8iFd6d+eCjed+Nl3JcvcFRGOK3oYXxUyEaMRFGL\n\
Eavz0dV7aLXqYgWENDXosoA5JDlhm6m28ctXNN4XqVgxeTH+HsUQLikyum1MfUi0\n\
/QNBXMx/W2tuvyZVTOx9cQso38ZmojTbqdaHnPH+eNom+R9lQ1S9rxi71BsABXXW\n\
UW7cTsUCgYEA7qnGnVHq32i3/qxuM8yoQ6RnALv+KMRO2EQWCNqmWIDjUZ7hUxNj\n\
RwJFfjt/BLs8CBbti+OkgvPDdArw/8fIlF+DtvYPq0TPyug6lxX1JqZmtk9xo1Ru\n\
4PcrCSEEUlMhtlEnU9pT5L8A90zY+SPGOukP0tu3T+V+Gn41nDfj0W8CgYEA3gKH\n\
l+k5Nogvpe92YzJjePW1ppPCpUJYo8cb4q4NScQFGE5XV9Je+IFM757uqBsFj1pG\n\
g2LCasWYABMbEQ2b78X75nn3KiYmGf8P3UR0JhqnwY0Qy4Rcpc2zZgZEfmrCePXO\n\
VfeUIPWY5A2cPEZIJ0QGojM6Pqfjc4D2aIsnrzMCgYAqJChB1xkV4bO7cE71Lon3\n\
h6v4YTl7kU4qubr6TUFaF0gMPXWj6aR6AVir9W10NGthMks3jDacONamQthTEb/F\n\
Eyh6we/6Wegm9+KAkwv6ix9Pya9TG7GIX5xlvEK7Fpq5SpMbJ03w8hkFkbguJbb2\n\
5/g3TzyLCwa9PtPQhb3gWQKBgHjWWaU2nRxwXbbssrxlVb0lx/xl2oEGrqZeHnBw\n\
Ge13kupa4bF8YJLUFeMq122KX6laEp06qOVirUwFGitbA/ArC+OzqPM5Fm355VGj\n\
C7EduwdfV6/eWGsqniW+7ZL9WuJpsCgcfHTAGLqwKcSo4Gb24MFyLpah3OwmWngm\n\
na//AoGAVK6vGZn1KMON4/hve1LdQX15fpuFjFpujMRwKu0tFhusNNfiVl9MNznZ\n\
l7romJPsZxA/HqMc05ANkHd1sTgbvEXdf5zztf0wVeJrF5Nw67sUw9ntRGqB6HgR\n\
Gb7+7RCWQuK8sonrtC5cPOicR89A1R0bnySOEAzfZKi5sQZX0/E=\n\
-----END RSA PRIVATE KEY-----\n";

/// The public half of [`RSA_PRIVATE_PEM`].
pub const RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzvmV+SGTSvnq0tzwoDU2\n\
A+ve3i0rTV9spjJ8LtIMEdGjdG/aTuy0JQFc4BdhK+25xjrBBoIHWyFEBNzdRbSU\n\
/b39T0XmRJP/7GiMTE4dIJNAhx8q9U1GzBmJwEEasQ6fBgJXuhURB1BcvlABW5nP\n\
TcI2WPulFN4T40BvYqn8D95oUuaUxoHZ6KoMZ8W57Rx0utMeVPwJGylLBE3HqfsJ\n\
UzLMMOvYkZ+GWzTiP7pp7Goy7H+mVQjfphXzwrWSH379L/Dm7otqRsjsGKONoEFT\n\
ja304LFSPSfBiEEdU56J/wunu/DwlbDtVpQ0S4TgC3SXNCNsdKLpySe/PW3YC3aa\n\
HQIDAQAB\n\
-----END PUBLIC KEY-----\n";

/// The key material of a test node, written to files in a [`TempDir`].
pub struct Keys {
    pub dir: TempDir,
    pub users_file: PathBuf,
    pub rsa_public: PathBuf,
    pub ec_private_pem: String,
    pub ec_public: PathBuf,
    /// A JWKS with the EC key (kid `ec-1`) and an HMAC key (kid `oct-1`).
    pub jwks: PathBuf,
    pub jwks_hmac: Vec<u8>,
    pub tls: TestTls,
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
pub struct TestTls {
    pub files: TlsFiles,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestTls {
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A cheap argon2id hash (the tests run unoptimized; the server reads the cost from the hash).
pub fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let params = argon2::Params::new(64, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon.hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng)).unwrap().to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Keys {
    pub fn new() -> Keys {
        let dir = TempDir::new();
        let users = format!(
            "# test users\nann:{}:traders\nbob:{}\nops:{}:operators\nwitness:{}:witness\n",
            argon2_hash("ann-pw"),
            bcrypt::hash("bob-pw", 4).unwrap(),
            argon2_hash("ops-pw"),
            bcrypt::hash("witness-pw", 4).unwrap(),
        );
        let users_file = dir.write("users", &users);
        let rsa_public = dir.write("rsa.pub.pem", RSA_PUBLIC_PEM);
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ec_public = dir.write("ec.pub.pem", &ec.public_key_pem());
        let point = ec.public_key_raw();
        let jwks_hmac = b"a jwks hmac key of at least 32 bytes!!".to_vec();
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
             "x": b64(&point[1..33]), "y": b64(&point[33..65])},
            {"kty": "oct", "kid": "oct-1", "alg": "HS256", "k": b64(&jwks_hmac)},
        ]});
        let jwks = dir.write("jwks.json", &jwks.to_string());
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let tls = TestTls {
            files: TlsFiles {
                cert: dir.write("cert.pem", &cert.cert.pem()),
                key: dir.write("key.pem", &cert.key_pair.serialize_pem()),
            },
            cert_der: cert.cert.der().clone(),
        };
        Keys {
            users_file,
            rsa_public,
            ec_private_pem: ec.serialize_pem(),
            ec_public,
            jwks,
            jwks_hmac,
            tls,
            dir,
        }
    }

    /// Users file, HS256 secret and RSA key, audience, issuer, access rules, origins, admin
    /// token: the configuration most tests use.
    pub fn secure(&self, c: &mut Config) {
        c.auth.users_file = Some(self.users_file.clone());
        c.auth.jwt.secret = Some(Secret::new(JWT_SECRET));
        c.auth.jwt.public_key = Some(self.rsa_public.clone());
        c.auth.jwt.audience = Some(vec![AUDIENCE.to_owned()]);
        c.auth.jwt.issuer = Some(vec![ISSUER.to_owned()]);
        c.auth.jwt.leeway = Duration::from_secs(1);
        c.auth.acl = vec![
            rule(Subject::Role("witness".into()), &["/topic/bystander"], &["/topic/bystander"]),
            rule(Subject::Role("traders".into()), &["/queue/orders"], &["/topic/prices/*"]),
            rule(Subject::Role("operators".into()), &["/user/*", "/topic/*"], &["/topic/*"]),
            rule(Subject::Anyone, &[], &["/topic/public.*"]),
        ];
        c.auth.acl_default = AclDefault::Deny;
        c.auth.admin_token = Some(Secret::new(ADMIN_TOKEN));
        c.origins = OriginPolicy { allowed: Some(vec![ORIGIN.to_owned()]), allow_missing: true };
    }
}

pub fn rule(subject: Subject, publish: &[&str], subscribe: &[&str]) -> AclRule {
    AclRule {
        subject,
        publish: publish.iter().map(|p| p.to_string()).collect(),
        subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token to mint: claims (with `aud`, `iss` and `exp` in an hour by default) and a key.
pub struct Token {
    pub claims: Value,
    pub header: Header,
}

impl Token {
    /// A token for `sub` that the secure configuration accepts once signed.
    pub fn for_user(sub: &str) -> Token {
        Token {
            claims: json!({"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "exp": now() + 3600}),
            header: Header::new(Algorithm::HS256),
        }
    }

    pub fn claim(mut self, name: &str, value: Value) -> Token {
        self.claims[name] = value;
        self
    }

    pub fn without(mut self, name: &str) -> Token {
        self.claims.as_object_mut().unwrap().remove(name);
        self
    }

    pub fn kid(mut self, kid: &str) -> Token {
        self.header.kid = Some(kid.to_owned());
        self
    }

    fn sign(mut self, alg: Algorithm, key: &EncodingKey) -> String {
        self.header.alg = alg;
        jsonwebtoken::encode(&self.header, &self.claims, key).unwrap()
    }

    pub fn hs256(self) -> String {
        self.hs256_with(JWT_SECRET.as_bytes())
    }

    pub fn hs256_with(self, secret: &[u8]) -> String {
        self.sign(Algorithm::HS256, &EncodingKey::from_secret(secret))
    }

    pub fn rs256(self) -> String {
        self.sign(Algorithm::RS256, &EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).unwrap())
    }

    pub fn es256(self, private_pem: &str) -> String {
        self.sign(Algorithm::ES256, &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap())
    }

    /// An unsigned token (`alg` as given, usually `none`), as an attacker writes it.
    pub fn unsigned(self, alg: &str) -> String {
        let header = json!({"alg": alg, "typ": "JWT"});
        format!("{}.{}.", b64(header.to_string().as_bytes()), b64(self.claims.to_string().as_bytes()))
    }
}

// === the node ===

/// Monotonic counter for unique names (receipts, topics).
static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A node running on 127.0.0.1 with ephemeral ports for its three listeners.
pub struct TestNode {
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// CONNECT headers of a well-behaved client allowed on `/topic/bystander`.
    pub bystander_login: Vec<(String, String)>,
    pub admin_token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), stampede::Error>>>,
}

impl TestNode {
    /// Starts a node from the built-in defaults with test-friendly timings, then `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        Self::start_with(None, configure).await
    }

    /// Same, with TLS from `tls` (whose connector the clients then use).
    pub async fn start_with(tls: Option<&TestTls>, configure: impl FnOnce(&mut Config)) -> TestNode {
        init_tracing();
        let mut config = Config { drain_period: Duration::from_millis(100), ..Config::default() };
        if let Some(tls) = tls {
            config.tls = Some(tls.files.clone());
        }
        configure(&mut config);
        let bystander_login = if config.auth.users_file.is_some() {
            vec![("login".to_owned(), "witness".to_owned()), ("passcode".to_owned(), "witness-pw".to_owned())]
        } else {
            Vec::new()
        };
        let admin_token = config.auth.admin_token.as_ref().map(|t| t.expose().to_owned());
        let bind = || TcpListener::bind("127.0.0.1:0");
        let (ws, stomp, admin) = (bind().await.unwrap(), bind().await.unwrap(), bind().await.unwrap());
        let addrs = (ws.local_addr().unwrap(), stomp.local_addr().unwrap(), admin.local_addr().unwrap());
        let listeners = stampede::Listeners { ws, stomp: Some(stomp), admin: Some(admin) };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(stampede::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        TestNode {
            ws: addrs.0,
            tcp: addrs.1,
            admin: addrs.2,
            tls: tls.map(TestTls::connector),
            bystander_login,
            admin_token,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts the drain and waits (at most 10 s) for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("not shut down yet");
        let result = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the node did not stop in time")
            .expect("the node task panicked");
        result.expect("run returned an error");
    }

    /// Whether the node task ended (it should not, while serving).
    pub fn stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    pub fn ws_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://localhost:{}/ws", self.ws.port())
    }

    /// A STOMP-over-TCP connection (TLS when the node has it), not yet STOMP-connected.
    pub async fn tcp(&self) -> Client {
        Client::new(Conn::Raw(self.stream(self.tcp).await))
    }

    /// A TCP (or TLS) stream to `addr`.
    pub async fn stream(&self, addr: SocketAddr) -> BoxStream {
        let stream = TcpStream::connect(addr).await.expect("TCP connect");
        stream.set_nodelay(true).unwrap();
        match &self.tls {
            None => Box::new(stream),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, stream).await.expect("TLS handshake"))
            }
        }
    }

    /// A WebSocket at `/ws` with extra handshake headers (and `?query` when given).
    pub async fn try_ws(
        &self,
        query: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
        let url = match query {
            Some(query) => format!("{}?{query}", self.ws_url()),
            None => self.ws_url(),
        };
        let mut request = url.into_client_request()?;
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("v12.stomp"));
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            request.headers_mut().insert(name, HeaderValue::from_str(value).unwrap());
        }
        let stream = self.stream(self.ws).await;
        let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
        Ok((Client::new(Conn::Ws(Box::new(ws))), response))
    }

    /// A WebSocket client, not yet STOMP-connected.
    pub async fn ws(&self) -> Client {
        self.try_ws(None, &[]).await.expect("WebSocket handshake").0
    }

    pub async fn open(&self, t: Transport) -> Client {
        match t {
            Transport::Tcp => self.tcp().await,
            Transport::Ws => self.ws().await,
        }
    }

    /// A client STOMP-connected with `headers`; panics unless CONNECTED.
    pub async fn connect(&self, t: Transport, headers: &[(&str, &str)]) -> Client {
        let mut client = self.open(t).await;
        let answer = client.connect(headers).await;
        assert_eq!(answer.command, Command::Connected, "CONNECT refused: {}", show(&answer));
        client
    }

    /// A client connected as the bystander (`witness`, when there is a users file).
    pub async fn connect_bystander(&self, t: Transport) -> Client {
        let login: Vec<(&str, &str)> =
            self.bystander_login.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        self.connect(t, &login).await
    }

    /// An HTTP request to the admin port with the admin token (when one is set).
    pub async fn admin_get(&self, path: &str) -> HttpResponse {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        http(self.admin, "GET", path, auth.as_deref(), None).await
    }

    pub async fn metrics(&self) -> String {
        let response = self.admin_get("/metrics").await;
        assert_eq!(response.status, 200, "/metrics: {}", response.body);
        response.body
    }

    pub async fn metric(&self, key: &str) -> f64 {
        metric(&self.metrics().await, key).unwrap_or(0.0)
    }

    /// Open client connections, as `/metrics` counts them.
    pub async fn connections(&self) -> f64 {
        let text = self.metrics().await;
        ["ws", "tcp"]
            .iter()
            .map(|t| metric(&text, &format!("stampede_connections{{transport=\"{t}\"}}")).unwrap_or(0.0))
            .sum()
    }

    /// Waits until the node counts `n` connections.
    pub async fn await_connections(&self, n: f64) {
        let node = self;
        let ok = eventually(WAIT, move || async move { node.connections().await == n }).await;
        assert!(ok, "expected {n} connections, the node counts {}", self.connections().await);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// === the bystander ===

pub const BYSTANDER_TOPIC: &str = "/topic/bystander";
/// Messages the bystander's publisher sends while the attack runs.
pub const PUBLISHED: usize = 30;

/// A subscriber and a publisher on `/topic/bystander`: the publisher sends [`PUBLISHED`]
/// messages 5 ms apart, then `end`; [`Bystander::finish`] asserts the subscriber got exactly
/// those, in order.
pub struct Bystander {
    subscriber: Client,
    publishing: JoinHandle<Client>,
}

impl Bystander {
    pub async fn start(node: &TestNode) -> Bystander {
        let mut subscriber = node.connect_bystander(Transport::Ws).await;
        subscriber.subscribe(BYSTANDER_TOPIC, "b").await;
        let mut publisher = node.connect_bystander(Transport::Tcp).await;
        let publishing = tokio::spawn(async move {
            for i in 0..PUBLISHED {
                publisher.send(BYSTANDER_TOPIC, &i.to_string()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            publisher.publish(BYSTANDER_TOPIC, "end").await;
            publisher
        });
        Bystander { subscriber, publishing }
    }

    /// Asserts the subscriber received every message, exactly once and in order; returns the
    /// two clients (still connected).
    pub async fn finish(mut self) -> (Client, Client) {
        let publisher = self.publishing.await.expect("the publisher ran");
        let expected: Vec<String> = (0..PUBLISHED).map(|i| i.to_string()).collect();
        let mut got = Vec::new();
        loop {
            let message = self.subscriber.recv_message().await;
            let body = body(&message);
            if body == "end" {
                break;
            }
            got.push(body);
        }
        assert_eq!(got, expected, "the bystander missed or reordered messages");
        (self.subscriber, publisher)
    }
}

/// Starts a node with `configure` and a bystander, runs `attack`, then asserts the bystander got
/// every message, the node still serves (a new client connects and gets a receipt), and only
/// the bystander's two connections are left.
pub async fn under_attack<F>(tls: Option<&TestTls>, configure: impl FnOnce(&mut Config), attack: F)
where
    F: for<'n> AsyncFnOnce(&'n TestNode),
{
    let node = TestNode::start_with(tls, configure).await;
    let bystander = Bystander::start(&node).await;
    attack(&node).await;
    let (_subscriber, _publisher) = bystander.finish().await;
    assert!(!node.stopped(), "the node stopped");
    let mut late = node.connect_bystander(Transport::Tcp).await;
    late.publish(BYSTANDER_TOPIC, "still serving").await;
    late.disconnect().await;
    node.await_connections(2.0).await;
    node.shutdown().await;
}

// === the STOMP client ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Tcp,
}

#[derive(Debug)]
pub enum RecvError {
    Timeout,
    /// The server closed the connection (or reset it).
    Closed,
    /// The server sent bytes that are not STOMP.
    Invalid(String),
}

/// Any byte stream: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

pub enum Conn {
    Raw(BoxStream),
    Ws(Box<WebSocketStream<BoxStream>>),
}

/// A STOMP client for tests: sends frames or raw bytes, decodes what the server sends.
pub struct Client {
    conn: Conn,
    decoder: Decoder,
    buf: BytesMut,
    stash: VecDeque<Frame>,
    pub version: Option<Version>,
    /// Close code of the server's WebSocket close frame, once received.
    pub close_code: Option<u16>,
    closed: bool,
}

fn client_limits() -> Limits {
    Limits {
        max_frame_bytes: 64 << 20,
        max_body_bytes: 64 << 20,
        max_headers: 4096,
        max_header_line: 1 << 20,
    }
}

impl Client {
    pub fn new(conn: Conn) -> Client {
        Client {
            conn,
            decoder: Decoder::new(client_limits()),
            buf: BytesMut::new(),
            stash: VecDeque::new(),
            version: None,
            close_code: None,
            closed: false,
        }
    }

    pub fn is_ws(&self) -> bool {
        matches!(self.conn, Conn::Ws(_))
    }

    // --- sending ---

    /// Sends bytes as they are: written to the stream, or as one WebSocket message (text when
    /// they are UTF-8, binary otherwise).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Raw(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Conn::Ws(ws) => {
                let message = match std::str::from_utf8(bytes) {
                    Ok(text) => Message::text(text),
                    Err(_) => Message::binary(bytes.to_vec()),
                };
                ws.send(message).await.map_err(std::io::Error::other)
            }
        }
    }

    /// Sends one WebSocket message (panics on TCP).
    pub async fn send_ws(&mut self, message: Message) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => ws.send(message).await.map_err(std::io::Error::other),
            Conn::Raw(_) => panic!("send_ws on a TCP client"),
        }
    }

    /// Writes bytes under the WebSocket layer, straight to the socket: hand-made (possibly
    /// invalid) WebSocket frames.
    pub async fn send_under_ws(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.conn {
            Conn::Ws(ws) => {
                let stream = ws.get_mut();
                stream.write_all(bytes).await?;
                stream.flush().await
            }
            Conn::Raw(_) => panic!("send_under_ws on a TCP client"),
        }
    }

    /// Encodes `frame` for the negotiated version and sends it.
    pub async fn send_frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(frame, self.version, &mut out);
        self.send_raw(&out).await
    }

    /// CONNECT (1.2) with `headers`; returns the answer (CONNECTED or ERROR).
    pub async fn connect(&mut self, headers: &[(&str, &str)]) -> Frame {
        let mut frame =
            Frame::new(Command::Connect).with_header("accept-version", "1.2").with_header("host", "x");
        for (name, value) in headers {
            frame = frame.with_header(*name, *value);
        }
        self.send_frame(&frame).await.expect("send CONNECT");
        let answer = self.recv(WAIT).await.unwrap_or_else(|e| panic!("no answer to CONNECT: {e:?}"));
        if answer.command == Command::Connected {
            self.version = Some(Version::V1_2);
            self.decoder.set_version(Version::V1_2);
        }
        answer
    }

    /// Sends `frame` with a fresh receipt; returns the RECEIPT, or the ERROR as `Err`.
    pub async fn try_request(&mut self, frame: Frame) -> Result<Frame, Frame> {
        let id = unique("r");
        self.send_frame(&frame.with_header("receipt", id.clone())).await.expect("send");
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        let result = loop {
            let frame = match self.next_frame(deadline).await {
                Ok(frame) => frame,
                Err(e) => panic!("no RECEIPT {id}: {e:?}"),
            };
            match frame.command {
                Command::Receipt if frame.get("receipt-id") == Some(id.as_str()) => break Ok(frame),
                Command::Error => break Err(frame),
                _ => seen.push(frame),
            }
        };
        for frame in seen.into_iter().rev() {
            self.stash.push_front(frame);
        }
        result
    }

    /// Like [`Client::try_request`]; panics on an ERROR.
    pub async fn request(&mut self, frame: Frame) -> Frame {
        match self.try_request(frame).await {
            Ok(receipt) => receipt,
            Err(error) => panic!("ERROR instead of a RECEIPT: {}", show(&error)),
        }
    }

    pub async fn subscribe(&mut self, destination: &str, id: &str) -> Frame {
        self.request(subscribe_frame(destination, id)).await
    }

    /// SEND without a receipt.
    pub async fn send(&mut self, destination: &str, body: &str) {
        self.send_frame(&send_frame(destination, body)).await.expect("send SEND");
    }

    /// SEND waiting for its receipt.
    pub async fn publish(&mut self, destination: &str, body: &str) -> Frame {
        self.request(send_frame(destination, body)).await
    }

    pub async fn disconnect(&mut self) {
        self.request(Frame::new(Command::Disconnect)).await;
        self.expect_closed(WAIT).await;
    }

    // --- receiving ---

    /// The next frame, skipping heart-beats.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Frame, RecvError> {
        self.next_frame(Instant::now() + timeout).await
    }

    /// The next frame, which must be a MESSAGE.
    pub async fn recv_message(&mut self) -> Frame {
        let frame = self.recv(WAIT).await.unwrap_or_else(|e| panic!("expected a MESSAGE: {e:?}"));
        assert_eq!(frame.command, Command::Message, "expected a MESSAGE, got {}", show(&frame));
        frame
    }

    /// Asserts nothing but heart-beats arrives for `QUIET`.
    pub async fn assert_quiet(&mut self) {
        match self.recv(QUIET).await {
            Err(RecvError::Timeout) => {}
            Ok(frame) => panic!("expected nothing, got {}", show(&frame)),
            Err(e) => panic!("expected nothing, got {e:?}"),
        }
    }

    /// Reads until the server closes the connection; returns the frames that came first.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            match self.next_frame(deadline).await {
                Ok(frame) => frames.push(frame),
                Err(RecvError::Closed) => return frames,
                Err(RecvError::Timeout) => panic!(
                    "the server did not close the connection; frames: {:?}",
                    frames.iter().map(show).collect::<Vec<_>>()
                ),
                Err(RecvError::Invalid(e)) => panic!("invalid bytes from the server: {e}"),
            }
        }
    }

    /// Expects an ERROR frame (as the last frame) and the connection closed; returns the ERROR.
    pub async fn expect_error(&mut self) -> Frame {
        let frames = self.expect_closed(WAIT).await;
        let last = frames.last().unwrap_or_else(|| panic!("closed without an ERROR frame"));
        assert_eq!(
            last.command,
            Command::Error,
            "expected ERROR last, got {:?}",
            frames.iter().map(show).collect::<Vec<_>>()
        );
        last.clone()
    }

    /// Expects an ERROR whose `message` contains `needle`, then the close.
    pub async fn expect_refusal(&mut self, needle: &str) -> Frame {
        let error = self.expect_error().await;
        assert_error(&error, needle);
        error
    }

    async fn next_frame(&mut self, deadline: Instant) -> Result<Frame, RecvError> {
        if let Some(frame) = self.stash.pop_front() {
            return Ok(frame);
        }
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(frame))) => return Ok(frame),
                Ok(Some(Decoded::Heartbeat)) => continue,
                Ok(None) => {}
                Err(e) => return Err(RecvError::Invalid(e.to_string())),
            }
            if self.closed {
                return Err(RecvError::Closed);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(Ok(())) => {}
                Ok(Err(())) => self.closed = true,
            }
        }
    }

    /// Reads more bytes into the buffer; Err when the connection ended.
    async fn fill(&mut self) -> Result<(), ()> {
        match &mut self.conn {
            Conn::Raw(stream) => {
                self.buf.reserve(64 * 1024);
                match stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => Err(()),
                    Ok(_) => Ok(()),
                }
            }
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => {
                        self.buf.extend_from_slice(text.as_bytes());
                        return Ok(());
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        self.buf.extend_from_slice(&bytes);
                        return Ok(());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        self.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Err(()),
                }
            },
        }
    }
}

// === frames ===

pub fn send_frame(destination: &str, body: &str) -> Frame {
    Frame::new(Command::Send)
        .with_header("destination", destination)
        .with_header("content-length", body.len().to_string())
        .with_body(body.as_bytes().to_vec())
}

pub fn subscribe_frame(destination: &str, id: &str) -> Frame {
    Frame::new(Command::Subscribe).with_header("destination", destination).with_header("id", id)
}

pub fn body(frame: &Frame) -> String {
    String::from_utf8(frame.body.to_vec()).expect("a UTF-8 body")
}

/// A one-line description of a frame for assertion messages.
pub fn show(frame: &Frame) -> String {
    let body = String::from_utf8_lossy(&frame.body);
    format!("{} {:?} {:?}", frame.command.as_str(), frame.headers, body.chars().take(200).collect::<String>())
}

/// Asserts `frame` is an ERROR whose `message` contains `needle`.
pub fn assert_error(frame: &Frame, needle: &str) {
    assert_eq!(frame.command, Command::Error, "expected ERROR, got {}", show(frame));
    let message = frame.get("message").unwrap_or_default();
    assert!(message.contains(needle), "ERROR message {message:?} does not mention {needle:?}");
}

/// A client-to-server WebSocket frame, built by hand: `fin`, `opcode`, masked or not.
pub fn ws_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

// === HTTP ===

/// One HTTP/1.1 request to the admin port, with an `Authorization` and a JSON body if given.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    json_body: Option<&str>,
) -> HttpResponse {
    let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
    http_request(addr, method, path, &headers, json_body.map(|j| ("application/json", j.as_bytes()))).await
}
