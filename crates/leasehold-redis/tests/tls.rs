//! `rediss://` with a private CA and client certificates, against a
//! TLS-only Redis container whose certificates are made at test time: the
//! client connects with the CA (and its certificate when the server asks for
//! one), and refuses a server its CA did not sign, a server whose
//! certificate names another host, and plaintext when TLS files were given.

mod tls_support;

use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError};
use leasehold_redis::{RedisBackend, RedisConfig};
use tls_support::{Pki, tls_server};

const TTL: Duration = Duration::from_secs(5);

async fn connect(url: &str) -> Result<RedisBackend, LockError> {
    let config = RedisConfig::from_url(url)?.timeout(Duration::from_secs(3));
    RedisBackend::connect_with(config).await
}

fn refused(result: Result<RedisBackend, LockError>) -> String {
    match result {
        Ok(backend) => panic!("expected the connection to be refused, got {backend:?}"),
        Err(error) => format!("{error} {error:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_with_the_private_ca_locks_and_anything_less_is_refused() {
    let pki = Pki::new(&["127.0.0.1"]);
    let Some(server) = tls_server(&pki, true).await else {
        return;
    };
    let base = format!("rediss://127.0.0.1:{}", server.port);

    let backend = connect(&format!("{base}?{}", pki.mtls_query()))
        .await
        .expect("CA + client certificate connects");
    let key = Key::new("tls:mutual").unwrap();
    let lease = backend
        .try_acquire(&key, TTL)
        .await
        .expect("a lock over TLS");
    backend.release(&lease).await.expect("released over TLS");
    let shown = format!(
        "{:?}",
        RedisConfig::from_url(&format!("{base}?{}", pki.mtls_query()))
    );
    assert!(
        !shown.contains("PRIVATE KEY") && shown.contains("client.key"),
        "Debug shows the key's path, never its contents: {shown}"
    );

    // Without a client certificate the server ends the handshake.
    let ca_only = format!("{base}?ca={}", pki.path("ca.pem").display());
    let error = refused(connect(&ca_only).await);
    assert!(!error.contains("PRIVATE KEY"), "{error}");

    // Without the CA the server's certificate is not trusted (web roots).
    let no_ca = format!(
        "{base}?cert={}&key={}",
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let error = refused(connect(&no_ca).await);
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

#[tokio::test]
async fn server_auth_only_connects_with_the_ca_and_refuses_another_ca_or_host_name() {
    let pki = Pki::new(&["127.0.0.1"]);
    let Some(server) = tls_server(&pki, false).await else {
        return;
    };
    let port = server.port;
    let ca = pki.path("ca.pem");

    let backend = connect(&format!("rediss://127.0.0.1:{port}?ca={}", ca.display()))
        .await
        .expect("the private CA is enough when client certificates are optional");
    let key = Key::new("tls:server-auth").unwrap();
    let lease = backend
        .try_acquire(&key, TTL)
        .await
        .expect("a lock over TLS");
    backend.release(&lease).await.expect("released");

    let error = refused(connect(&format!("rediss://127.0.0.1:{port}")).await);
    assert!(
        error.to_lowercase().contains("certificate"),
        "web roots: {error}"
    );

    let other = pki.path("other-ca.pem");
    let error =
        refused(connect(&format!("rediss://127.0.0.1:{port}?ca={}", other.display())).await);
    assert!(
        error.to_lowercase().contains("certificate"),
        "other CA: {error}"
    );

    // `localhost` reaches the same server, but its certificate names only
    // 127.0.0.1.
    let error = refused(connect(&format!("rediss://localhost:{port}?ca={}", ca.display())).await);
    assert!(
        error.contains("NotValidForName") || error.to_lowercase().contains("not valid for name"),
        "wrong host name: {error}"
    );

    // Plaintext to a TLS port is no connection either.
    refused(connect(&format!("redis://127.0.0.1:{port}")).await);
}

#[test]
fn tls_files_are_config_errors_naming_the_option_and_never_yield_plaintext() {
    let pki = Pki::new(&["127.0.0.1"]);
    let missing = pki.dir().join("missing.pem");
    for (url, option) in [
        (
            format!("rediss://127.0.0.1:1?ca={}", missing.display()),
            "`ca`",
        ),
        (
            format!(
                "rediss://127.0.0.1:1?cert={}&key={}",
                pki.path("client.pem").display(),
                missing.display()
            ),
            "`key`",
        ),
        (
            format!(
                "rediss://127.0.0.1:1?cert={}",
                pki.path("client.pem").display()
            ),
            "`cert`",
        ),
        (
            format!("redis://127.0.0.1:1?ca={}", pki.path("ca.pem").display()),
            "rediss://",
        ),
        (
            format!("redis+unix:///tmp/s?ca={}", pki.path("ca.pem").display()),
            "`ca`",
        ),
    ] {
        match RedisConfig::from_url(&url) {
            Err(LockError::Config(message)) => {
                assert!(
                    message.contains(option),
                    "{url}: expected {option} in {message}"
                )
            }
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
    // The key's contents never show, even when the file is not a key.
    std::fs::write(pki.dir().join("bad.key"), "not-a-key super-secret").unwrap();
    let url = format!(
        "rediss://:pw@127.0.0.1:1?cert={}&key={}",
        pki.path("client.pem").display(),
        pki.dir().join("bad.key").display()
    );
    let error = RedisConfig::from_url(&url).unwrap_err().to_string();
    assert!(
        !error.contains("super-secret") && !error.contains("pw@"),
        "{error}"
    );
}
