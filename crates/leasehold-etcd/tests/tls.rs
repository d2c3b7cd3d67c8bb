//! `etcds://` with a private CA and client certificates, against a TLS-only
//! etcd whose certificates are made at test time: the client connects with
//! the CA (and its certificate when etcd runs with `--client-cert-auth`),
//! keeps user/password authentication over TLS, and refuses a server its CA
//! did not sign, a server whose certificate names another host, and
//! plaintext; a server that requires client certificates refuses a client
//! without one.

mod tls_support;

use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError};
use leasehold_etcd::{EtcdBackend, EtcdConfig};
use tls_support::{Pki, tls_server};

const TTL: Duration = Duration::from_secs(5);

async fn connect(url: &str) -> Result<EtcdBackend, LockError> {
    let config = EtcdConfig::from_url(url)?.timeout(Duration::from_secs(3));
    EtcdBackend::connect_with(config).await
}

/// The error of a connection that must fail, with its sources (the TLS
/// reason is in them).
fn refused(result: Result<EtcdBackend, LockError>) -> String {
    match result {
        Ok(backend) => panic!("expected the connection to be refused, got {backend:?}"),
        Err(error) => {
            let mut text = format!("{error} {error:?}");
            let mut source = std::error::Error::source(&error);
            while let Some(inner) = source {
                text.push_str(&format!(" / {inner}"));
                source = inner.source();
            }
            text
        }
    }
}

async fn lock_and_release(backend: &EtcdBackend, name: &str) {
    let key = Key::new(name).unwrap();
    let lease = backend
        .try_acquire(&key, TTL)
        .await
        .expect("a lock over TLS");
    backend.release(&lease).await.expect("released over TLS");
}

#[tokio::test]
async fn server_auth_connects_with_the_ca_and_refuses_web_roots_another_ca_a_wrong_name_and_plaintext()
 {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, false).await;
    let port = server.port;
    let ca = pki.path("ca.pem");

    let backend = connect(&format!("etcds://127.0.0.1:{port}?ca={}", ca.display()))
        .await
        .expect("the private CA is enough without --client-cert-auth");
    lock_and_release(&backend, "tls:server-auth").await;

    let error = refused(connect(&format!("etcds://127.0.0.1:{port}")).await);
    assert!(
        error.to_lowercase().contains("certificate"),
        "web roots: {error}"
    );
    let other = pki.path("other-ca.pem");
    let error = refused(connect(&format!("etcds://127.0.0.1:{port}?ca={}", other.display())).await);
    assert!(
        error.to_lowercase().contains("certificate"),
        "other CA: {error}"
    );
    // `localhost` reaches the same server, but its certificate names only
    // 127.0.0.1.
    let error = refused(connect(&format!("etcds://localhost:{port}?ca={}", ca.display())).await);
    assert!(
        error.contains("NotValidForName") || error.to_lowercase().contains("not valid for name"),
        "wrong host name: {error}"
    );
    // Plaintext to the TLS port is no connection either.
    refused(connect(&format!("etcd://127.0.0.1:{port}")).await);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate_and_keeps_user_password_auth() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, true).await;
    let base = format!("127.0.0.1:{}", server.port);
    let mtls = pki.mtls_query();

    let backend = connect(&format!("etcds://{base}?{mtls}"))
        .await
        .expect("CA + client certificate connects");
    lock_and_release(&backend, "tls:mutual").await;
    let shown = format!("{:?}", backend.config());
    assert!(
        shown.contains("client.key") && !shown.contains("PRIVATE KEY"),
        "Debug shows the key's path, never its contents: {shown}"
    );

    // etcd with --client-cert-auth ends the handshake of a client without a
    // certificate.
    let error = refused(
        connect(&format!(
            "etcds://{base}?ca={}",
            pki.path("ca.pem").display()
        ))
        .await,
    );
    // Under TLS 1.3 the client finishes its side of the handshake first, so
    // the server's refusal arrives either as its alert ("certificate
    // required") or as the connection closing under the first request.
    let lower = error.to_lowercase();
    assert!(
        (lower.contains("certificate")
            || lower.contains("broken pipe")
            || lower.contains("transport error"))
            && !error.contains("PRIVATE KEY"),
        "no client certificate: {error}"
    );

    // Turn etcd's authentication on: a root user with a password. Over TLS
    // the user and password still decide (the certificate's common name is
    // no user of this etcd).
    let mut client = backend.client().clone();
    client
        .user_add("root", "s3cret-pw", None)
        .await
        .expect("add root");
    client
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    client.auth_enable().await.expect("enable auth");
    let authed = connect(&format!("etcds://root:s3cret-pw@{base}?{mtls}"))
        .await
        .expect("user and password over mutual TLS");
    lock_and_release(&authed, "tls:auth").await;
    let error = refused(connect(&format!("etcds://root:wrong-pw@{base}?{mtls}")).await);
    assert!(
        !error.contains("wrong-pw") && !error.contains("s3cret"),
        "no password in errors: {error}"
    );
}

#[tokio::test]
async fn tls_files_are_config_errors_naming_the_option_and_never_yield_plaintext() {
    let pki = Pki::new(&["127.0.0.1"]);
    let missing = pki.dir().join("missing.pem");
    let cert = pki.path("client.pem");
    std::fs::write(pki.dir().join("bad.key"), "not-a-key super-secret").unwrap();
    let bad_key = pki.dir().join("bad.key");
    for (url, expected) in [
        (
            format!("etcds://127.0.0.1:1?ca={}", missing.display()),
            format!("`ca`: cannot read {}", missing.display()),
        ),
        (
            format!(
                "etcds://127.0.0.1:1?cert={}&key={}",
                cert.display(),
                missing.display()
            ),
            format!("`key`: cannot read {}", missing.display()),
        ),
        (
            format!(
                "etcds://u:pw@127.0.0.1:1?cert={}&key={}",
                cert.display(),
                bad_key.display()
            ),
            format!("`key`: {} holds no PEM block", bad_key.display()),
        ),
        (
            format!("etcds://127.0.0.1:1?cert={}", cert.display()),
            "`cert` needs `key`".to_owned(),
        ),
        (
            format!("etcd://127.0.0.1:1?ca={}", pki.path("ca.pem").display()),
            "etcds://".to_owned(),
        ),
    ] {
        match connect(&url).await {
            Err(LockError::Config(message)) => {
                assert!(
                    message.contains(&expected),
                    "{url}: expected {expected:?} in {message}"
                );
                assert!(
                    !message.contains("super-secret") && !message.contains("pw@"),
                    "{message}"
                );
            }
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
    // The builder reads the same files and says the same.
    let error = EtcdBackend::connect_with(EtcdConfig::new(["127.0.0.1:1"]).ca(&missing))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LockError::Config(m) if m.contains("`ca`")),
        "{error:?}"
    );
}
