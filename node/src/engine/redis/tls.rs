//! TLS to Redis, for the `rediss` forms of `redis-url`: rustls on ring, as the client listeners.
//!
//! Redis's certificate is always verified; no setting turns that off. It must chain to the CA
//! certificates of `redis-tls-ca` when that is set (they replace the system's roots, so a private
//! CA is trusted for Redis and nothing else is), or else to the system's roots (read as
//! `rustls-native-certs` reads them: `SSL_CERT_FILE` and `SSL_CERT_DIR` override the system's
//! store). No client certificate is offered.
//!
//! One connector serves every connection fred opens: to the server, to the Sentinels and the
//! master they name, to every node of a Cluster. Each is verified against the name it is reached
//! by: the URL's host, the address a Sentinel reports, the hostname (else the IP address) a
//! Cluster node announces; a certificate must name it.
//!
//! [`connector`] runs twice: before the node binds ([`RedisEngine::check_tls`], called by
//! [`crate::Security::load`]), so a missing or invalid CA file, or a system without roots, stops
//! the node with exit status 2; and when the engine connects.
//!
//! [`RedisEngine::check_tls`]: super::RedisEngine::check_tls

use std::path::Path;
use std::sync::Arc;

use fred::types::config::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::config::settings::REDIS_TLS_CA;
use crate::transport::tls::{certificates, TlsError};

/// The connector for every connection to Redis: trusting `ca` (the `redis-tls-ca` file) if
/// given, else the system's roots.
pub(super) fn connector(ca: Option<&Path>) -> Result<TlsConnector, TlsError> {
    let roots = match ca {
        Some(path) => private_roots(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::RedisTrust(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}

/// Every certificate of the `redis-tls-ca` file, each a usable trust anchor.
fn private_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(REDIS_TLS_CA.name, path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            setting: REDIS_TLS_CA.name,
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The system's roots; at least one, or nothing could ever be verified.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(found.certs);
    if added > 0 {
        return Ok(roots);
    }
    let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
    Err(TlsError::RedisTrust(format!(
        "this system has no trusted root certificates{why}; install them (Debian: ca-certificates) \
         or set redis-tls-ca to the CA that signed Redis's certificate"
    )))
}
