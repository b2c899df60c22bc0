//! TLS for the client listeners: rustls (on `ring`) through tokio-rustls.
//!
//! With `tls-cert` and `tls-key` set, both client listeners speak TLS only: WebSocket clients
//! connect with `wss://host:port/ws` and TCP clients with STOMP over TLS ("stomp+ssl"). The
//! transports stay generic over the stream: an accepted `TcpStream` is wrapped in a `TlsStream`
//! before the WebSocket handshake or the first STOMP byte, within `connect-timeout`. TLS 1.2
//! and 1.3 are offered with rustls's safe defaults; client certificates are not asked for. The
//! admin port stays plain HTTP (bind it to a private address). Certificates are read at start-up
//! and again on SIGHUP ([`crate::reload`]): the node then holds a new acceptor, which each new
//! connection takes; connections already made keep theirs.
//!
//! The TLS settings live here too: [`TlsFiles`] and [`resolve_files`], which checks that
//! `tls-cert` and `tls-key` are set together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::config::layers::Layers;
use crate::config::parse::path;
use crate::config::settings::{TLS_CERT, TLS_KEY};
use crate::config::ConfigError;

/// The certificate chain and private key of the client listeners, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `tls-cert` and `tls-key` settings: both or neither. Called by
/// [`Layers::resolve`](crate::config::layers::Layers::resolve); the files are read by [`acceptor`].
pub(crate) fn resolve_files(layers: &Layers<'_>) -> Result<Option<TlsFiles>, ConfigError> {
    let cert = layers.optional(&TLS_CERT, path)?;
    let key = layers.optional(&TLS_KEY, path)?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert: cert.value, key: key.value })),
        (None, None) => Ok(None),
        (Some(cert), None) => Err(ConfigError::Needs {
            setting: cert.setting,
            origin: cert.origin,
            reason: "needs tls-key, the certificate's private key",
        }),
        (None, Some(key)) => Err(ConfigError::Needs {
            setting: key.setting,
            origin: key.origin,
            reason: "needs tls-cert, the certificate it belongs to",
        }),
    }
}

/// Why a certificate, key or CA file could not be used; names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {setting} {}: {source}", .path.display())]
    Read { setting: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid {setting} {}: {reason}", .path.display())]
    Invalid { setting: &'static str, path: PathBuf, reason: String },
    #[error("tls-cert and tls-key do not make a usable server identity: {0}")]
    Config(String),
    /// TLS to Redis (`engine::redis::tls`) has nothing to verify Redis's certificate with.
    #[error("cannot verify Redis's certificate (rediss redis-url): {0}")]
    RedisTrust(String),
}

/// The acceptor for the configured certificate chain and key.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(TLS_CERT.name, &files.cert)?;
    let key = private_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.to_owned(), source })
}

/// The PEM certificates of the file `setting` names: at least one.
pub(crate) fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(setting, path)?;
    let invalid = |reason: String| TlsError::Invalid { setting, path: path.to_owned(), reason };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate (BEGIN CERTIFICATE) found".to_owned()));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const SETTING: &str = TLS_KEY.name;
    let pem = read(SETTING, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        setting: SETTING,
        path: path.to_owned(),
        reason: format!("expected a PKCS#8, PKCS#1 or SEC1 private key in PEM form: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err, ok};

    #[test]
    fn tls_needs_both_files() {
        let e = err(&["--tls-cert", "/c.pem"], &[]);
        assert_eq!(e, "tls-cert (from command line --tls-cert) needs tls-key, the certificate's private key");
        let e = err(&[], &[("STAMPEDE_TLS_KEY", "/k.pem")]);
        assert!(e.starts_with("tls-key (from environment STAMPEDE_TLS_KEY) needs tls-cert"), "{e}");
        let c = ok(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"], &[]);
        assert_eq!(c.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
    }
}
