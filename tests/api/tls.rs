//! Optional TLS: a self-signed certificate made at test time, served on
//! both listeners; plaintext clients are refused; bad files stop the start.

use std::path::PathBuf;
use std::sync::Arc;

use pulse::app::App;
use pulse::config::{ServeSettings, TlsSettings};
use pulse::grpc::proto::query_service_client::QueryServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::TestDatabase;

/// A certificate for `localhost`, written as PEM files that are removed on drop.
struct TestCert {
    cert_pem: String,
    dir: PathBuf,
}

impl TestCert {
    fn new() -> Self {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed certificate");
        let dir = std::env::temp_dir().join(format!("pulse-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert_pem = made.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write cert");
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
        Self { cert_pem, dir }
    }

    fn settings(&self) -> TlsSettings {
        TlsSettings {
            cert: Some(self.dir.join("cert.pem")),
            key: Some(self.dir.join("key.pem")),
        }
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET `path` over HTTPS, trusting only `cert_pem`; returns the status line.
async fn https_get(addr: std::net::SocketAddr, path: &str, cert_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify; what was read is enough.
    let _ = tls.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_listeners_serve_tls_and_refuse_plaintext() {
    let cert = TestCert::new();
    let db = TestDatabase::migrated().await;
    let mut settings = ServeSettings::for_database(&db.url);
    settings.tls = cert.settings();
    let app = App::build(settings).await.expect("builds with TLS");
    let (grpc_addr, http_addr) = (app.grpc_addr(), app.http_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));

    let channel = Endpoint::from_shared(format!("https://{grpc_addr}"))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cert.cert_pem))
                .domain_name("localhost"),
        )
        .expect("client TLS")
        .connect()
        .await
        .expect("TLS connect");
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over TLS");
    let status = QueryServiceClient::new(channel)
        .get_metrics(pulse::grpc::proto::GetMetricsRequest::default())
        .await
        .expect_err("an empty request is invalid, but it got through TLS");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Plaintext gRPC to the TLS port gets no answer.
    let plain = Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect()
        .await;
    if let Ok(plain) = plain {
        let refused = HealthClient::new(plain)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert!(refused.is_err(), "plaintext gRPC was answered");
    }

    assert_eq!(
        https_get(http_addr, "/metrics", &cert.cert_pem).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        https_get(http_addr, "/", &cert.cert_pem).await,
        "HTTP/1.1 200 OK"
    );
    // Plain HTTP to the TLS port is not served.
    let mut tcp = tokio::net::TcpStream::connect(http_addr)
        .await
        .expect("tcp");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("200 OK"),
        "plain HTTP was served"
    );

    let _ = stop.send(());
    task.await.expect("no panic").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tls_files_stop_the_start() {
    let cert = TestCert::new();
    let other = TestCert::new();
    let db = TestDatabase::migrated().await;

    let build = |tls: TlsSettings| {
        let mut settings = ServeSettings::for_database(&db.url);
        settings.tls = tls;
        App::build(settings)
    };
    let only_cert = build(TlsSettings {
        cert: cert.settings().cert,
        key: None,
    })
    .await
    .err()
    .expect("a certificate without its key is refused");
    assert!(only_cert.to_string().contains("go together"), "{only_cert}");

    let missing = build(TlsSettings {
        cert: Some(cert.dir.join("nope.pem")),
        key: cert.settings().key,
    })
    .await
    .err()
    .expect("a missing file is refused");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");

    let mismatched = build(TlsSettings {
        cert: cert.settings().cert,
        key: other.settings().key,
    })
    .await
    .err()
    .expect("a key of another certificate is refused");
    assert!(mismatched.to_string().contains("--tls-key"), "{mismatched}");
}
