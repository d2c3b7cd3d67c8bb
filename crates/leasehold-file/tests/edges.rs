//! File-backend properties beyond the shared suite: what survives a new
//! client, what a dropped lease does, and that a damaged state file never
//! resets the fencing counter.

use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::{Key, LockBackend, LockError, OwnerToken};
use leasehold_file::{FileBackend, FileConfig, file_stem};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-file-edges-{}",
            OwnerToken::generate().short()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn backend(dir: &TempDir) -> FileBackend {
    FileBackend::connect_with(FileConfig::new(&dir.0))
        .await
        .unwrap()
}

#[tokio::test]
async fn tokens_keep_increasing_across_clients_and_force_releases() {
    let dir = TempDir::new();
    let key = Key::new("jobs:nightly").unwrap();
    let ttl = Duration::from_secs(30);
    let first = backend(&dir).await;
    let a = first.try_acquire(&key, ttl).await.unwrap();
    first.release(&a).await.unwrap();
    let b = first.try_acquire(&key, ttl).await.unwrap();
    let evicted = backend(&dir)
        .await
        .force_release(&key, "test")
        .await
        .unwrap();
    assert_eq!(
        evicted.and_then(|i| i.fencing_token),
        Some(b.fencing_token())
    );
    assert!(matches!(
        first.extend(&b, ttl).await,
        Err(LockError::Lost { .. })
    ));
    let fresh = backend(&dir).await;
    let c = fresh.try_acquire(&key, ttl).await.unwrap();
    assert!(
        c.fencing_token().get() > b.fencing_token().get() + 1,
        "the token after a force release ({}) must skip the evicted one ({})",
        c.fencing_token(),
        b.fencing_token()
    );
    fresh.release(&c).await.unwrap();
}

#[tokio::test]
async fn a_lease_dropped_without_release_frees_its_key() {
    let dir = TempDir::new();
    let key = Key::new("dropped").unwrap();
    let holder = backend(&dir).await;
    let other = backend(&dir).await;
    let lease = holder
        .try_acquire(&key, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        other.try_acquire(&key, Duration::from_secs(60)).await,
        Err(LockError::Contended { .. })
    ));
    let token = lease.fencing_token();
    drop(lease);
    let taken = other
        .try_acquire(&key, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(taken.fencing_token() > token);
    other.release(&taken).await.unwrap();
}

#[tokio::test]
async fn a_damaged_state_file_is_an_error_not_a_fresh_counter() {
    let dir = TempDir::new();
    let key = Key::new("damaged").unwrap();
    let client = backend(&dir).await;
    let lease = client
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap();
    client.release(&lease).await.unwrap();
    let state = dir.0.join(format!("{}.state", file_stem(key.as_str())));
    std::fs::write(&state, "not a state").unwrap();
    let error = client
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(error, LockError::Backend { .. }), "{error}");
    assert!(error.to_string().contains("refusing to reset"), "{error}");
}

#[tokio::test]
async fn namespaces_are_separate_directories() {
    let dir = TempDir::new();
    let key = Key::new("shared-name").unwrap();
    let ttl = Duration::from_secs(5);
    let a = FileBackend::connect_with(FileConfig::new(&dir.0).namespace("a"))
        .await
        .unwrap();
    let b = FileBackend::connect_with(FileConfig::new(&dir.0).namespace("b"))
        .await
        .unwrap();
    let la = a.try_acquire(&key, ttl).await.unwrap();
    let lb = b.try_acquire(&key, ttl).await.unwrap();
    assert_ne!(a.dir(), b.dir());
    a.release(&la).await.unwrap();
    b.release(&lb).await.unwrap();
}

#[tokio::test]
async fn a_missing_directory_is_refused_without_create() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing");
    let error = FileBackend::connect_with(FileConfig::new(&missing).create(false))
        .await
        .unwrap_err();
    assert!(matches!(error, LockError::Config(_)), "{error}");
    let url = format!("file://{}", missing.display());
    FileBackend::connect(&url).await.unwrap();
    assert!(missing.is_dir());
}
