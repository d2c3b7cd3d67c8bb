//! TLS pieces every backend shares: [`TlsFiles`], the `ca`, `cert` and `key`
//! URL options (a private CA, a client certificate for mutual TLS) read from
//! PEM files, and, with this crate's `rustls` feature,
//! [`install_default_crypto_provider`].
//!
//! ```
//! use leasehold_core::tls::TlsFiles;
//! let mut files = TlsFiles::default();
//! assert!(files.set("zookeeper", "ca", "/pki/ca.pem").unwrap());
//! assert!(!files.set("zookeeper", "timeout", "2s").unwrap());
//! assert_eq!(files.given(), "`ca`");
//! assert!(files.set("zookeeper", "cert", "").is_err());
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use crate::LockError;
use crate::config::Secret;

/// The TLS option names, in the order errors list them.
pub const TLS_OPTIONS: &[&str] = &["ca", "cert", "key"];

/// The PEM files a TLS connection is made with: `ca` (the CA certificates
/// to trust), `cert` and `key` (the client certificate chain and its private
/// key, for servers that require one). `Debug` and every error show the
/// paths, never the files' contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `cert`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Takes URL option `name` if it is one of [`TLS_OPTIONS`] (`Ok(true)`;
    /// `Ok(false)` for any other name). An empty path is a `Config` error
    /// naming `backend`'s option.
    pub fn set(&mut self, backend: &str, name: &str, value: &str) -> Result<bool, LockError> {
        let slot = match name {
            "ca" => &mut self.ca,
            "cert" => &mut self.cert,
            "key" => &mut self.key,
            _ => return Ok(false),
        };
        if value.is_empty() {
            return Err(LockError::Config(format!(
                "{backend} option `{name}` needs a file path"
            )));
        }
        *slot = Some(PathBuf::from(value));
        Ok(true)
    }

    /// Whether no file is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// The options given, as `` `ca`, `key` `` for errors.
    pub fn given(&self) -> String {
        [(&self.ca, "ca"), (&self.cert, "cert"), (&self.key, "key")]
            .into_iter()
            .filter(|(path, _)| path.is_some())
            .map(|(_, name)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `cert` and `key` come together: one without the other is a `Config`
    /// error naming `backend`'s option. Checked before any file is read.
    pub fn check_pairs(&self, backend: &str) -> Result<(), LockError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(LockError::Config(format!(
                "{backend} option `cert` needs `key` (the client certificate's private key)"
            ))),
            (None, Some(_)) => Err(LockError::Config(format!(
                "{backend} option `key` needs `cert` (the client certificate)"
            ))),
            _ => Ok(()),
        }
    }

    /// Reads the files given (after [`check_pairs`](Self::check_pairs)). A
    /// missing or unreadable file, one that is not UTF-8 or one without a PEM
    /// block is a `Config` error naming `backend`'s option and the path,
    /// never the bytes.
    pub fn read(&self, backend: &str) -> Result<TlsPem, LockError> {
        self.check_pairs(backend)?;
        let ca = self
            .ca
            .as_deref()
            .map(|path| read_pem(backend, "ca", path))
            .transpose()?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((
                read_pem(backend, "cert", cert)?,
                Secret::new(read_pem(backend, "key", key)?),
            )),
            _ => None,
        };
        Ok(TlsPem { ca, identity })
    }
}

/// The contents of [`TlsFiles`], read. `Debug` shows whether each part is
/// there, never the private key.
#[derive(Clone)]
#[non_exhaustive]
pub struct TlsPem {
    /// The CA certificates, PEM.
    pub ca: Option<String>,
    /// The client certificate chain (PEM) and its private key (PEM, a
    /// [`Secret`]).
    pub identity: Option<(String, Secret)>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.as_ref().map(|_| "PEM"))
            .field("identity", &self.identity.as_ref().map(|_| "PEM, key ***"))
            .finish()
    }
}

/// The text of `backend`'s option `name` file at `path`; see
/// [`TlsFiles::read`].
fn read_pem(backend: &str, name: &str, path: &Path) -> Result<String, LockError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LockError::Config(format!(
            "{backend} option `{name}`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    match String::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN ") => Ok(text),
        _ => Err(LockError::Config(format!(
            "{backend} option `{name}`: {} holds no PEM block",
            path.display()
        ))),
    }
}

/// Makes rustls's `ring` provider the process-wide default unless the
/// application installed one already; backends call it before they build any
/// rustls client configuration.
///
/// Why: rustls picks a process default on its own only when exactly one
/// provider is compiled in. A build with a client that brings `aws-lc-rs`
/// (ZooKeeper's TLS) beside the `ring` the other clients use has two, and
/// then every `ClientConfig::builder()` (the Redis client's included) panics
/// for want of a default. If your application installs its own provider
/// before it connects (`CryptoProvider::install_default`), leasehold uses
/// yours: this only fills the gap. Losing the race to another installer is
/// fine (that one is used).
#[cfg(feature = "rustls")]
pub fn install_default_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed one first; it is the default now.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_by_option_and_errors_name_the_option_never_the_contents() {
        let dir = std::env::temp_dir().join(format!("leasehold-core-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let key = dir.join("client.key");
        let bad = dir.join("bad.key");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecret-bytes\n").unwrap();
        std::fs::write(&bad, "no pem here, secret-bytes").unwrap();

        let mut files = TlsFiles::default();
        for (name, path) in [("ca", &ca), ("cert", &ca), ("key", &key)] {
            assert!(files.set("zk", name, path.to_str().unwrap()).unwrap());
        }
        assert_eq!(files.given(), "`ca`, `cert`, `key`");
        let pem = files.read("zk").unwrap();
        assert!(pem.ca.as_deref().unwrap().contains("CERTIFICATE"));
        let shown = format!("{pem:?} {files:?}");
        assert!(!shown.contains("secret-bytes"), "{shown}");
        assert!(shown.contains("client.key"), "{shown}");

        files.key = Some(bad.clone());
        let error = files.read("zk").unwrap_err().to_string();
        assert!(error.contains("zk option `key`") && error.contains("holds no PEM block"));
        assert!(!error.contains("secret-bytes"), "{error}");
        files.key = Some(dir.join("missing.key"));
        let error = files.read("zk").unwrap_err().to_string();
        assert!(error.contains("`key`: cannot read") && error.contains("missing.key"));
        files.key = None;
        let error = files.read("zk").unwrap_err().to_string();
        assert!(error.contains("`cert` needs `key`"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
