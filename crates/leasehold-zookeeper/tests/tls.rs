//! `zks://` with a private CA and client certificates, against ZooKeeper
//! 3.8's TLS client port with certificates made at test time: the client
//! connects with the CA (and its certificate when the server runs with
//! `ssl.clientAuth=need`), keeps digest authentication and its ACLs over
//! TLS, and is refused by a server its CA did not sign, a server whose
//! certificate names another host, and in plaintext; a server that requires
//! client certificates refuses a client without one. TLS without a CA, a
//! missing file and TLS files on `zk://` are `Config` errors naming them.

mod tls_support;

use std::time::Duration;

use leasehold_core::config::BackendConfig;
use leasehold_core::{Key, LockBackend, LockError};
use leasehold_zookeeper::{ZkBackend, ZkConfig};
use tls_support::{Pki, connect, tls_server};

const TTL: Duration = Duration::from_secs(5);

/// The error of a connection that must fail, with its sources.
fn refused(result: Result<ZkBackend, LockError>) -> LockError {
    match result {
        Ok(backend) => panic!("expected the connection to be refused, got {backend:?}"),
        Err(error) => error,
    }
}

/// A refused handshake is a store that gives no session: `Unavailable`,
/// never a `Config` error or a connection.
fn assert_unavailable(error: &LockError, case: &str) {
    assert!(
        matches!(error, LockError::Unavailable { .. }),
        "{case}: expected Unavailable, got {error:?}"
    );
}

async fn lock_and_release(backend: &ZkBackend, name: &str) {
    let key = Key::new(name).unwrap();
    let lease = backend
        .try_acquire(&key, TTL)
        .await
        .expect("a lock over TLS");
    backend.release(&lease).await.expect("released over TLS");
}

#[tokio::test]
async fn server_auth_connects_with_the_ca_and_refuses_another_ca_a_wrong_name_and_plaintext() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, false).await;
    let port = server.port;
    let ca = pki.path("ca.pem");

    let backend = connect(&format!("zks://127.0.0.1:{port}?ca={}", ca.display()))
        .await
        .expect("the private CA is enough without ssl.clientAuth=need");
    lock_and_release(&backend, "tls:server-auth").await;
    assert!(backend.config().is_tls());

    // No CA: the client has no built-in roots, so this is no TLS at all.
    match connect(&format!("zks://127.0.0.1:{port}")).await {
        Err(LockError::Config(message)) => assert!(message.contains("`ca`"), "{message}"),
        other => panic!("zks:// without `ca`: expected a Config error, got {other:?}"),
    }
    let other = pki.path("other-ca.pem");
    let error = refused(connect(&format!("zks://127.0.0.1:{port}?ca={}", other.display())).await);
    assert_unavailable(&error, "another CA");
    // `localhost` reaches the same server, but its certificate names only
    // 127.0.0.1.
    let error = refused(connect(&format!("zks://localhost:{port}?ca={}", ca.display())).await);
    assert_unavailable(&error, "wrong host name");
    // Plaintext to the TLS port is no session either.
    let error = refused(connect(&format!("zk://127.0.0.1:{port}")).await);
    assert_unavailable(&error, "plaintext");
    drop(server);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate_and_keeps_digest_auth() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, true).await;
    let base = format!("127.0.0.1:{}", server.port);
    let mtls = pki.mtls_query();

    let backend = connect(&format!("zks://app:s3cret-pw@{base}?{mtls}"))
        .await
        .expect("CA + client certificate connects");
    lock_and_release(&backend, "tls:mutual").await;
    let shown = format!("{:?}", backend.config());
    assert!(
        shown.contains("client.key") && !shown.contains("PRIVATE KEY") && !shown.contains("s3cret"),
        "Debug shows the key's path, never its contents or the password: {shown}"
    );

    // Digest authentication over TLS: the holder's node gets the creator-only
    // ACL, whose identities are all of the creating session's: the digest
    // user and, over mutual TLS, ZooKeeper's x509 identity of the client
    // certificate (so a client with the same certificate is the same
    // identity; see the crate docs). The world may only read.
    let key = Key::new("tls:acl").unwrap();
    let lease = backend.try_acquire(&key, TTL).await.expect("a lock");
    let node = leasehold_zookeeper::node_path(&lease).unwrap().to_owned();
    let client = backend.client().await.unwrap();
    let (acl, _) = client.get_acl(&node).await.expect("the node's ACL");
    let ids: Vec<String> = acl
        .iter()
        .map(|entry| format!("{}:{}", entry.scheme(), entry.id()))
        .collect();
    assert!(
        ids.iter().any(|id| id.starts_with("digest:app:")),
        "{ids:?}"
    );
    assert!(ids.iter().any(|id| id.starts_with("x509:")), "{ids:?}");
    assert!(
        acl.iter()
            .filter(|entry| entry.scheme() == "world")
            .all(|entry| entry.permission()
                == leasehold_zookeeper::zookeeper_client::Permission::READ),
        "{acl:?}"
    );
    backend.release(&lease).await.expect("released");

    // ssl.clientAuth=need ends the handshake of a client without one.
    let error =
        refused(connect(&format!("zks://{base}?ca={}", pki.path("ca.pem").display())).await);
    assert_unavailable(&error, "no client certificate");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    drop(server);
}

#[tokio::test]
async fn tls_files_are_config_errors_naming_the_option_and_never_yield_plaintext() {
    let pki = Pki::new(&["127.0.0.1"]);
    let missing = pki.dir().join("missing.pem");
    let cert = pki.path("client.pem");
    let ca = pki.path("ca.pem");
    std::fs::write(pki.dir().join("bad.key"), "not-a-key super-secret").unwrap();
    let bad_key = pki.dir().join("bad.key");
    // Port 1: nothing listens, so only a Config error can come before any
    // connection is tried.
    for (url, expected) in [
        (
            format!("zks://127.0.0.1:1?ca={}", missing.display()),
            format!("`ca`: cannot read {}", missing.display()),
        ),
        (
            format!(
                "zks://127.0.0.1:1?ca={}&cert={}&key={}",
                ca.display(),
                cert.display(),
                missing.display()
            ),
            format!("`key`: cannot read {}", missing.display()),
        ),
        (
            format!(
                "zks://u:pw@127.0.0.1:1?ca={}&cert={}&key={}",
                ca.display(),
                cert.display(),
                bad_key.display()
            ),
            format!("`key`: {} holds no PEM block", bad_key.display()),
        ),
        (
            format!(
                "zks://127.0.0.1:1?ca={}&cert={}",
                ca.display(),
                cert.display()
            ),
            "`cert` needs `key`".to_owned(),
        ),
        (
            format!("zk://127.0.0.1:1?ca={}", ca.display()),
            "zks://".to_owned(),
        ),
        (
            // The client certificate is no CA file.
            format!("zks://127.0.0.1:1?ca={}", pki.path("client.key").display()),
            "`ca`".to_owned(),
        ),
    ] {
        match connect(&url).await {
            Err(LockError::Config(message)) => {
                assert!(
                    message.contains(&expected),
                    "{url}: expected {expected:?} in {message}"
                );
                assert!(
                    !message.contains("super-secret")
                        && !message.contains("pw@")
                        && !message.contains("PRIVATE KEY"),
                    "{message}"
                );
            }
            other => panic!("{url}: expected a Config error, got {other:?}"),
        }
    }
    // The builder reads the same files and says the same.
    let error = ZkBackend::connect_with(ZkConfig::new("127.0.0.1:1").ca(&missing))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LockError::Config(m) if m.contains("`ca`")),
        "{error:?}"
    );
    // A TLS host must be one a certificate can name.
    let error = ZkBackend::connect_with(ZkConfig::new("zk_1 a:2281").ca(&ca))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, LockError::Config(m) if m.contains("cannot be reached with TLS")),
        "{error:?}"
    );
    let parsed =
        ZkConfig::from_url(&format!("zks://h1:2281,h2:2281/ns?ca={}", ca.display())).unwrap();
    assert!(parsed.is_tls() && parsed.tls_files().ca.as_deref() == Some(ca.as_path()));
}
