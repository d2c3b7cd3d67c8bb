//! Digest authentication and creator-only ACLs against a real ZooKeeper:
//! with `zk://user:password@..`, lock nodes get "the creating identity may do
//! anything, the world may read", so a second client of the ensemble
//! (unauthenticated, or authenticated as someone else) can read a holder's
//! node but not delete it, nor queue under the key; the holder's release and
//! an admin's force release with the same identity still work.

mod common;

use std::time::Duration;

use common::{key, start};
use leasehold_core::{LockBackend, LockError};
use leasehold_zookeeper::zookeeper_client::{self as zk, Acls, Client, CreateMode, Permission};
use leasehold_zookeeper::{ZkBackend, ZkConfig, node_path};

const TTL: Duration = Duration::from_secs(5);

/// A raw client, authenticated with `digest` credentials when given.
async fn raw(hosts: &str, digest: Option<&str>) -> Client {
    let mut connector = Client::connector().with_session_timeout(Duration::from_secs(4));
    if let Some(credentials) = digest {
        connector = connector.with_auth("digest", credentials.as_bytes());
    }
    connector.connect(hosts).await.expect("a raw session")
}

#[tokio::test]
async fn other_identities_cannot_delete_a_holders_node_but_the_holder_and_its_admin_can() {
    let server = start().await;
    let hosts = server.hosts();
    let url = format!("zk://app:s3cret@{hosts}/leasehold-acl?session_timeout=4s&timeout=2s");
    let holder = ZkBackend::connect(&url)
        .await
        .expect("connect with digest auth");
    let lock = key("acl:a");
    let lease = holder.try_acquire(&lock, TTL).await.expect("acquire");
    let node = node_path(&lease).expect("a node").to_owned();
    let key_node = node.rsplit_once('/').unwrap().0.to_owned();

    // The ACL says so, and anyone may still read (tools can list).
    let anonymous = raw(&hosts, None).await;
    let (acl, _) = anonymous.get_acl(&node).await.expect("read the ACL");
    assert!(
        acl.iter().any(|a| a.scheme() == "digest"
            && a.id().starts_with("app:")
            && a.permission() == Permission::ALL),
        "{acl:?}"
    );
    assert!(
        acl.iter()
            .any(|a| a.scheme() == "world" && a.permission() == Permission::READ),
        "{acl:?}"
    );
    anonymous.get_data(&node).await.expect("the world may read");

    // An unauthenticated session, another user, and the right user with a
    // wrong password (another digest) are all refused.
    let other_user = raw(&hosts, Some("mallory:s3cret")).await;
    let wrong_password = raw(&hosts, Some("app:guess")).await;
    for (who, client) in [
        ("unauthenticated", &anonymous),
        ("another user", &other_user),
        ("a wrong password", &wrong_password),
    ] {
        assert_eq!(
            client.delete(&node, None).await,
            Err(zk::Error::NoAuth),
            "{who} deleted the holder's node"
        );
        let sneak = format!("{key_node}/sneak-");
        let created = client
            .create(
                &sneak,
                b"",
                &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
            )
            .await;
        assert!(
            matches!(created, Err(zk::Error::NoAuth)),
            "{who} queued under the key: {created:?}"
        );
    }
    assert!(anonymous.check_stat(&node).await.unwrap().is_some());

    // A backend of another identity cannot take the lock or evict the holder;
    // its errors say why and show no password.
    let intruder = ZkBackend::connect_with(
        ZkConfig::new(&hosts)
            .namespace("/leasehold-acl")
            .digest_auth("mallory", "s3cret")
            .timeout(Duration::from_secs(2)),
    )
    .await
    .expect("connect as another user");
    let error = intruder.try_acquire(&lock, TTL).await.unwrap_err();
    assert!(
        matches!(&error, LockError::Backend { .. }) && error.to_string().contains("NoAuth"),
        "{error:?}"
    );
    let error = intruder.force_release(&lock, "test").await.unwrap_err();
    assert!(error.to_string().contains("NoAuth"), "{error:?}");
    assert!(!format!("{error} {error:?}").contains("s3cret"));
    holder
        .extend(&lease, TTL)
        .await
        .expect("still held after the attempts");

    // The holder releases its own node.
    holder.release(&lease).await.expect("the holder releases");

    // An admin with the same identity force-releases a holder.
    let lease = holder.try_acquire(&lock, TTL).await.expect("acquire again");
    let admin = ZkBackend::connect(&url)
        .await
        .expect("admin, same identity");
    let evicted = admin
        .force_release(&lock, "test")
        .await
        .expect("same identity may evict")
        .expect("a holder was evicted");
    assert_eq!(evicted.fencing_token, Some(lease.fencing_token()));
    assert!(matches!(
        holder.extend(&lease, TTL).await,
        Err(LockError::Lost { .. })
    ));
}

#[tokio::test]
async fn without_credentials_nodes_stay_open_as_before() {
    let server = start().await;
    let hosts = server.hosts();
    let backend = ZkBackend::connect_with(
        ZkConfig::new(&hosts)
            .namespace("/leasehold-open")
            .timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let lease = backend.try_acquire(&key("open"), TTL).await.unwrap();
    let node = node_path(&lease).unwrap().to_owned();
    let other = raw(&hosts, Some("mallory:x")).await;
    let (acl, _) = other.get_acl(&node).await.unwrap();
    assert!(
        acl.iter()
            .all(|a| a.scheme() == "world" && a.permission() == Permission::ALL),
        "{acl:?}"
    );
}
