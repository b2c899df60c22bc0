//! The key material of the security tests, written to files in a [`TempDir`]: a users file,
//! JWT keys and a JWKS ([`Keys`]), a self-signed TLS certificate ([`TestTls`]), token minting
//! ([`Token`]), and [`Keys::secure`], the configuration most security tests use. Also
//! [`TestCa`], a private CA and a server certificate it signed, for TLS to Redis.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use stampede::config::{AclDefault, AclRule, Config, OriginPolicy, Secret, Subject, TlsFiles};
use tokio_rustls::rustls;

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

/// A directory in the temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl Default for TempDir {
    fn default() -> TempDir {
        TempDir::new()
    }
}

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
        trusting(&self.cert_der)
    }
}

/// A private CA and a server certificate it signed for `localhost` and 127.0.0.1, as PEM files
/// in their own [`TempDir`]: what a TLS `redis-server` serves ([`crate::Redis::start_tls`]) and
/// what a node trusts with `--redis-tls-ca`. Two of them are two CAs that trust nothing of each
/// other's.
pub struct TestCa {
    pub dir: TempDir,
    /// The CA's certificate: `--redis-tls-ca`.
    pub ca: PathBuf,
    /// The server's certificate (signed by the CA) and key.
    pub server: TlsFiles,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        // Each CA its own name, so a server certificate of one names an issuer the other is not.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name =
            format!("Stampede test CA {}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = TempDir::new();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
        TestCa {
            ca: dir.write("ca.pem", &ca.pem()),
            server: TlsFiles {
                cert: dir.write("server.pem", &server.pem()),
                key: dir.write("server-key.pem", &server_key.serialize_pem()),
            },
            ca_der: ca.der().clone(),
            dir,
        }
    }

    /// A client that trusts this CA only.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        trusting(&self.ca_der)
    }
}

/// A client connector whose one trusted root is `root`.
fn trusting(root: &rustls::pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
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

impl Default for Keys {
    fn default() -> Keys {
        Keys::new()
    }
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

/// Monotonic counter for unique names (receipts, topics).
static SEQ: AtomicU64 = AtomicU64::new(0);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", SEQ.fetch_add(1, Ordering::Relaxed))
}
