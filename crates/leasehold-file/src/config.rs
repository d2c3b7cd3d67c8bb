//! [`FileConfig`]: the URL options, the builder, and the settings a backend
//! resolves from them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leasehold_core::config::{self, BackendConfig, MAX_DURATION, SharedConfig, apply_query};
use leasehold_core::{Drift, LockError, SharedClock, system_clock};

use crate::FileBackend;
use crate::keys::file_stem;

/// The shortest TTL accepted.
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// The default operation timeout: how long a call may wait for a key's guard
/// lock (held for microseconds by each other call) before it is
/// `Unavailable`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default pause between a waiter's attempts (there is no release
/// signal across processes; waiters poll).
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);

/// How to reach a lock directory: `file:///var/lock/myapp?namespace=billing`.
///
/// ```
/// use leasehold_file::FileConfig;
/// use std::time::Duration;
/// let config = FileConfig::from_url("file:///var/lock/myapp?namespace=billing&timeout=2s")?;
/// assert_eq!(config.dir_of().unwrap().to_str(), Some("/var/lock/myapp"));
/// let same = FileConfig::new("/var/lock/myapp").namespace("billing").timeout(Duration::from_secs(2));
/// assert_eq!(config.lock_dir(), same.lock_dir());
/// # Ok::<(), leasehold_core::LockError>(())
/// ```
#[derive(Clone)]
pub struct FileConfig {
    dir: Option<PathBuf>,
    shared: SharedConfig,
    create: bool,
    clock: SharedClock,
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("dir", &self.dir)
            .field("shared", &self.shared)
            .field("create", &self.create)
            .finish_non_exhaustive()
    }
}

impl FileConfig {
    /// Locks in `dir` (created, with its parents, on connect unless
    /// [`create(false)`](Self::create)).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileConfig {
            dir: Some(dir.into()),
            shared: SharedConfig::default(),
            create: true,
            clock: system_clock(),
        }
    }

    leasehold_core::shared_setters!();

    /// Whether connecting creates the directory if it is missing (option
    /// `create`; default true). With `false` a missing directory is a
    /// `Config` error: a typo in the path cannot silently split the locks.
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// The clock for `valid_until` (inject a `TestClock` in tests). Expiry
    /// in the files always uses the host's monotonic clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The directory named by the URL or [`new`](Self::new).
    pub fn dir_of(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The directory the lock files go in: the directory itself, or for a
    /// namespace its subdirectory `ns.<encoded namespace>` (encoded as keys
    /// are, see [`file_stem`](crate::file_stem)).
    pub fn lock_dir(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(match &self.shared.namespace {
            Some(namespace) => dir.join(format!("ns.{}", file_stem(namespace))),
            None => dir.clone(),
        })
    }

    /// Reads a `file:///absolute/path?options` URL (as
    /// [`BackendConfig::from_url`], without importing the trait).
    pub fn from_url(url: &str) -> Result<Self, LockError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            LockError::Config(format!(
                "not a URL ({e}); expected file:///absolute/path?options"
            ))
        })?;
        if !Self::SCHEMES.contains(&parsed.scheme()) {
            return Err(LockError::Config(format!(
                "the URL scheme must be file, not {:?}",
                parsed.scheme()
            )));
        }
        if parsed
            .host_str()
            .is_some_and(|h| !h.is_empty() && h != "localhost")
        {
            return Err(LockError::Config(format!(
                "file:// locks are local to one host: the URL names host {:?}; \
                 use file:///path (network file systems are not supported)",
                parsed.host_str().unwrap_or_default()
            )));
        }
        let dir = parsed
            .to_file_path()
            .map_err(|()| LockError::Config("the file URL has no usable absolute path".into()))?;
        let mut out = FileConfig::new(dir);
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let mut shared = SharedConfig::default();
        let mut create = true;
        apply_query(
            "file",
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &mut shared,
            Self::OPTIONS,
            |name, value| match name {
                "create" => {
                    create = config::boolean(name, value)?;
                    Ok(true)
                }
                _ => Ok(false),
            },
        )?;
        out.shared = shared;
        out.create = create;
        out.settings()?;
        Ok(out)
    }

    /// The settings a backend runs with, checked.
    pub(crate) fn settings(&self) -> Result<Settings, LockError> {
        let shared = &self.shared;
        let dir = self
            .lock_dir()
            .ok_or_else(|| LockError::Config("no lock directory given".into()))?;
        if let Some(namespace) = &shared.namespace
            && (namespace.len() > 1024 || namespace.contains('\0'))
        {
            return Err(LockError::Config(
                "the namespace must be at most 1024 bytes without NUL".into(),
            ));
        }
        let timeout = shared.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_DURATION {
            return Err(LockError::Config(format!(
                "the operation timeout must be positive and at most one year, not {timeout:?}"
            )));
        }
        let drift = shared.drift.unwrap_or_default();
        if !(0.0..1.0).contains(&drift.factor) || drift.fixed > MAX_DURATION {
            return Err(LockError::Config(format!(
                "drift_factor must be in [0, 1) and drift_fixed at most one year, not {} and {:?}",
                drift.factor, drift.fixed
            )));
        }
        Ok(Settings {
            dir,
            create: self.create,
            timeout,
            poll: shared.poll.unwrap_or(DEFAULT_POLL),
            holder: shared.holder_or_default(),
            clock: self.clock.clone(),
            drift,
        })
    }
}

impl BackendConfig for FileConfig {
    type Backend = FileBackend;
    const SCHEMES: &'static [&'static str] = &["file"];
    const OPTIONS: &'static [&'static str] = &["create"];

    /// Reads `file:///absolute/path`. Shared options (`namespace`,
    /// `timeout`, `poll`, `holder`, `drift_factor`, `drift_fixed`) and the
    /// locker's (`ttl`, `wait`, ...) are accepted; this backend's own is
    /// `create`. Any other name is a [`LockError::Config`] naming the closest
    /// known one. A host other than `localhost` is refused.
    fn from_url(url: &str) -> Result<Self, LockError> {
        FileConfig::from_url(url)
    }

    fn shared(&self) -> &SharedConfig {
        &self.shared
    }

    fn shared_mut(&mut self) -> &mut SharedConfig {
        &mut self.shared
    }

    async fn connect(self) -> Result<FileBackend, LockError> {
        FileBackend::connect_with(self).await
    }
}

/// What a backend runs with: a [`FileConfig`] with its defaults filled in.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) dir: PathBuf,
    pub(crate) create: bool,
    pub(crate) timeout: Duration,
    pub(crate) poll: Duration,
    pub(crate) holder: String,
    pub(crate) clock: SharedClock,
    pub(crate) drift: Drift,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("dir", &self.dir)
            .field("timeout", &self.timeout)
            .field("poll", &self.poll)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_options_are_read() {
        let config = FileConfig::from_url(
            "file:///tmp/locks?namespace=a%2Fb&timeout=250ms&poll=10ms&ttl=2s&create=false",
        )
        .unwrap();
        let settings = config.settings().unwrap();
        assert_eq!(settings.dir, PathBuf::from("/tmp/locks/ns.k-a%2fb"));
        assert_eq!(settings.timeout, Duration::from_millis(250));
        assert_eq!(settings.poll, Duration::from_millis(10));
        assert!(!settings.create);
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in [
            "file:///tmp/l?timeout=250",
            "file:///tmp/l?timout=1s",
            "file:///tmp/l?create=maybe",
            "file://nfs-server/export/locks",
            "redis://h/",
            "file:///tmp/l?namespace=",
            "not a url",
        ] {
            assert!(
                matches!(FileConfig::from_url(url), Err(LockError::Config(_))),
                "{url} should be rejected"
            );
        }
    }
}
