//! Optional TLS for both listeners (`--tls-cert`, `--tls-key`, PEM).
//!
//! The files are read and checked once in `App::build`, before anything
//! binds, so a wrong path or a key that does not match its certificate stops
//! the start with a clear error. gRPC serves them through tonic's rustls
//! acceptor (ALPN `h2`); HTTP through tokio-rustls in Pulse's own accept
//! loop (`listen.rs`, ALPN `http/1.1`). Both use the `ring` provider: no C
//! toolchain beyond ring's.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;
use crate::error::{Error, Result};

/// A certificate chain and its key, read and checked.
#[derive(Clone)]
pub struct TlsFiles {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The HTTP listener's configuration, built once as the check.
    http: Arc<rustls::ServerConfig>,
}

impl TlsFiles {
    /// Reads the files named by `settings`; `None` when TLS is off.
    pub fn load(settings: &TlsSettings) -> Result<Option<Self>> {
        let (cert_path, key_path) = match (&settings.cert, &settings.key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(Error::InvalidArgument(
                    "--tls-cert and --tls-key go together: give both PEM files or neither".into(),
                ));
            }
        };
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot read the TLS {what} {}: {e}",
                    path.display()
                ))
            })
        };
        let cert_pem = read(cert_path, "certificate (--tls-cert)")?;
        let key_pem = read(key_path, "key (--tls-key)")?;
        let http = Arc::new(server_config(
            &cert_pem,
            &key_pem,
            vec![b"http/1.1".to_vec()],
        )?);
        Ok(Some(Self {
            cert_pem,
            key_pem,
            http,
        }))
    }

    /// The gRPC listener's configuration.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// The HTTP listener's configuration.
    pub fn http(&self) -> Arc<rustls::ServerConfig> {
        self.http.clone()
    }
}

fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::InvalidArgument(format!("--tls-cert is not a PEM certificate chain: {e}"))
        })?;
    if certs.is_empty() {
        return Err(Error::InvalidArgument(
            "--tls-cert holds no PEM certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::InvalidArgument(format!("--tls-key is not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::internal("TLS protocol versions", e))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        Error::InvalidArgument(format!(
            "--tls-cert and --tls-key do not make a usable pair: {e}"
        ))
    })?;
    config.alpn_protocols = alpn;
    Ok(config)
}
