//! HTTPS to a private endpoint: a TLS-terminating proxy (tokio-rustls, its
//! certificate signed by a CA made at test time with rcgen; nothing
//! committed) in front of the DynamoDB stand-in, which speaks plain HTTP.
//! With `ca=<that CA>` the backend locks through it; without the option, or
//! with another CA, the handshake is refused and connecting fails.

mod common;
#[path = "../../leasehold-redis/tests/tls_support/mod.rs"]
mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Key, LockBackend, LockError};
use leasehold_dynamodb::{BackendConfig, DynamoDbBackend, DynamoDbConfig};
use tls_support::Pki;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Accepts TLS on 127.0.0.1 with `pki`'s server certificate (for
/// `127.0.0.1`) and relays each connection to `upstream` in plaintext.
/// Returns the port; the task ends with the runtime.
async fn tls_proxy(pki: &Pki, upstream: u16) -> u16 {
    let certs = CertificateDer::pem_slice_iter(pki.server_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the server certificate");
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).expect("the server key");
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake just ends this connection.
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    port
}

async fn connect(url: &str) -> Result<DynamoDbBackend, LockError> {
    let config = DynamoDbConfig::from_url(url)?.timeout(Duration::from_secs(3));
    DynamoDbBackend::connect_with(config).await
}

#[tokio::test]
async fn the_ca_option_trusts_a_private_endpoint_and_without_it_the_handshake_is_refused() {
    let store = common::start().await;
    let upstream: u16 = store
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the stand-in's port");
    let pki = Pki::new(&["127.0.0.1"]);
    let port = tls_proxy(&pki, upstream).await;
    let base = format!(
        "dynamodb://test:test@{}?region=us-east-1&endpoint=https://127.0.0.1:{port}\
         &durable=false&create_table=true",
        common::table("tls")
    );

    let backend = connect(&format!("{base}&ca={}", pki.path("ca.pem").display()))
        .await
        .expect("the private CA is trusted");
    let key = Key::new("tls:dynamodb").unwrap();
    let lease = backend
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .expect("a lock over HTTPS");
    backend.release(&lease).await.expect("released over HTTPS");

    for (what, url) in [
        ("the system's roots only", base.clone()),
        (
            "another CA",
            format!("{base}&ca={}", pki.path("other-ca.pem").display()),
        ),
    ] {
        match connect(&url).await {
            Ok(backend) => panic!("{what}: expected the handshake to be refused, got {backend:?}"),
            Err(error) => {
                let shown = format!("{error} {error:?}");
                assert!(shown.contains("UnknownIssuer"), "{what}: {shown}");
            }
        }
    }
}

/// A CA cannot be added to an HTTP client the caller built: refused rather
/// than silently ignored.
#[tokio::test]
async fn a_ca_with_a_client_that_brings_its_own_http_client_is_a_config_error() {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Region};
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

    let pki = Pki::new(&["127.0.0.1"]);
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let sdk = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .http_client(http)
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(sdk);
    let config = DynamoDbConfig::new("locks")
        .endpoint("https://127.0.0.1:1")
        .ca(pki.path("ca.pem"));
    match DynamoDbBackend::connect_with_client(config, client).await {
        Err(LockError::Config(message)) => assert!(message.contains("`ca`"), "{message}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
}
