//! File-backend properties beyond the shared suite: what survives a new
//! client, what a dropped lease does, and that a damaged state file never
//! resets the fencing counter.

use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::{Key, ListQuery, LockBackend, LockError, LockKind, OwnerToken, WaitPolicy};
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
    let ttl = Duration::from_secs(60);
    let holder = backend(&dir).await;
    let other = backend(&dir).await;
    for kind in [
        LockKind::Exclusive,
        LockKind::Write,
        LockKind::Read,
        LockKind::Permit { permits: 1 },
    ] {
        let lease = holder.try_acquire_kind(&key, kind, ttl).await.unwrap();
        let next = if kind == LockKind::Read {
            LockKind::Write
        } else {
            kind
        };
        let refused = other.try_acquire_kind(&key, next, ttl).await;
        assert!(
            matches!(refused, Err(LockError::Contended { .. })),
            "{next} while a {kind} holds: {refused:?}"
        );
        let token = lease.fencing_token();
        drop(lease);
        let taken = other.try_acquire_kind(&key, next, ttl).await.unwrap();
        assert!(
            taken.fencing_token() > token,
            "{next} after a dropped {kind}"
        );
        other.release(&taken).await.unwrap();
    }
}

/// The reader-writer lock and the semaphore of a key live in files of their
/// own, and the admin operations see only the mutex.
#[tokio::test]
async fn admin_operations_see_mutexes_only() {
    let dir = TempDir::new();
    let key = Key::new("jobs").unwrap();
    let ttl = Duration::from_secs(60);
    let client = backend(&dir).await;
    let read = client
        .try_acquire_kind(&key, LockKind::Read, ttl)
        .await
        .unwrap();
    let permit = client
        .try_acquire_kind(&key, LockKind::Permit { permits: 2 }, ttl)
        .await
        .unwrap();
    for stem in ["rw.k-jobs", "sem.k-jobs"] {
        assert!(dir.0.join(format!("{stem}.state")).is_file(), "{stem}");
    }
    assert!(!dir.0.join("k-jobs.state").exists());
    assert_eq!(client.inspect(&key).await.unwrap(), None);
    let page = client.list(&ListQuery::default()).await.unwrap();
    assert!(page.locks.is_empty(), "listed {:?}", page.locks);
    assert_eq!(client.force_release(&key, "test").await.unwrap(), None);
    let read = client.extend(&read, ttl).await.unwrap();
    let permit = client.extend(&permit, ttl).await.unwrap();
    client.release(&read).await.unwrap();
    client.release(&permit).await.unwrap();
}

/// A writer's wait, dropped while it holds readers back, withdraws at once
/// (its entry leaves the state), not after its 60 s TTL.
#[tokio::test]
async fn a_dropped_writer_wait_withdraws_at_once() {
    let dir = TempDir::new();
    let key = Key::new("waited").unwrap();
    let ttl = Duration::from_secs(60);
    let (holder, writer, reader) = (
        backend(&dir).await,
        backend(&dir).await,
        backend(&dir).await,
    );
    let held = holder
        .try_acquire_kind(&key, LockKind::Read, ttl)
        .await
        .unwrap();
    let waiting = {
        let key = key.clone();
        tokio::spawn(async move {
            let wait = WaitPolicy::new(Duration::from_secs(60));
            writer.acquire_kind(&key, LockKind::Write, ttl, &wait).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match reader.try_acquire_kind(&key, LockKind::Read, ttl).await {
            Ok(lease) => reader.release(&lease).await.unwrap(),
            Err(LockError::Contended { .. }) => break,
            Err(e) => panic!("a reader's attempt failed: {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the waiting writer never held readers back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // Its entry leaves the state with no other call's help ...
    let state = dir.0.join(format!("rw.{}.state", file_stem(key.as_str())));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&state)
        .unwrap()
        .contains("\nwaiter ")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped wait's entry stayed in the state"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ... and readers go in.
    let lease = reader
        .try_acquire_kind(&key, LockKind::Read, ttl)
        .await
        .expect("a reader right after the waiting writer's call was dropped");
    reader.release(&lease).await.unwrap();
    holder.release(&held).await.unwrap();
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
    for (kind, prefix) in [
        (LockKind::Exclusive, ""),
        (LockKind::Read, "rw."),
        (LockKind::Permit { permits: 2 }, "sem."),
    ] {
        let state = dir
            .0
            .join(format!("{prefix}{}.state", file_stem(key.as_str())));
        std::fs::write(&state, "not a state").unwrap();
        let error = client
            .try_acquire_kind(&key, kind, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(error, LockError::Backend { .. }),
            "{kind}: {error}"
        );
        assert!(
            error.to_string().contains("refusing to reset"),
            "{kind}: {error}"
        );
    }
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
