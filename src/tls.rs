//! Mutual TLS: the rustls server configuration and the client identity.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|e| TlsError::Pem {
            path: path.display().to_string(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.display().to_string(),
            what: "no private key found".into(),
        })
}

pub fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// TLS 1.2 and 1.3 only, client certificate required and verified against `ca`.
pub fn server_config(cert: &Path, key: &Path, ca: &Path) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    // HTTP/2 first: Go's `net/http` client, like browsers, takes it when offered.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS 1.2 and 1.3 with no client certificate: for the agents' listener,
/// whose clients authenticate with an API key.
pub fn server_config_without_client_auth(
    cert: &Path,
    key: &Path,
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Why a verified certificate still has no usable identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityError {
    NoCertificate,
    Unparsable,
    NoCommonName,
    SeveralCommonNames,
    BadCommonName,
}

impl IdentityError {
    /// The label it is counted under in `/metrics`.
    pub fn metric(self) -> crate::metrics::IdentityFailure {
        use crate::metrics::IdentityFailure as F;
        match self {
            IdentityError::NoCertificate => F::NoCertificate,
            IdentityError::Unparsable => F::Unparsable,
            IdentityError::NoCommonName => F::NoCommonName,
            IdentityError::SeveralCommonNames => F::SeveralCommonNames,
            IdentityError::BadCommonName => F::BadCommonName,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            IdentityError::NoCertificate => "no client certificate",
            IdentityError::Unparsable => "client certificate cannot be parsed",
            IdentityError::NoCommonName => "client certificate has no CommonName",
            IdentityError::SeveralCommonNames => "client certificate has more than one CommonName",
            IdentityError::BadCommonName => "client certificate CommonName is not UTF-8 text",
        }
    }
}

/// The CommonName of a verified leaf certificate: exactly one, as text.
pub fn common_name(leaf: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| IdentityError::Unparsable)?;
    let mut cns = cert.subject().iter_common_name();
    let first = cns.next().ok_or(IdentityError::NoCommonName)?;
    if cns.next().is_some() {
        return Err(IdentityError::SeveralCommonNames);
    }
    let cn = first.as_str().map_err(|_| IdentityError::BadCommonName)?;
    if cn.is_empty() || cn.chars().any(char::is_control) {
        return Err(IdentityError::BadCommonName);
    }
    Ok(cn.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/certs")
            .join(name)
    }

    fn cn_of(name: &str) -> Result<String, IdentityError> {
        let certs = load_certs(&testdata(name)).unwrap();
        common_name(&certs[0])
    }

    #[test]
    fn common_names_of_the_test_certificates() {
        assert_eq!(cn_of("client-sso-server.pem").unwrap(), "sso-server");
        assert_eq!(cn_of("bad-no-cn.pem"), Err(IdentityError::NoCommonName));
        assert_eq!(
            cn_of("bad-two-cn.pem"),
            Err(IdentityError::SeveralCommonNames)
        );
        assert_eq!(common_name(b"junk"), Err(IdentityError::Unparsable));
    }

    #[test]
    fn server_config_loads() {
        server_config(
            &testdata("server.pem"),
            &testdata("server.key"),
            &testdata("ca.pem"),
        )
        .unwrap();
        assert!(load_key(&testdata("ca.pem")).is_err());
    }
}
