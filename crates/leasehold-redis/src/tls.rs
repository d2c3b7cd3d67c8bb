//! [`TlsFiles`]: the `ca`, `cert` and `key` options of a `rediss://` URL
//! (a private CA, and a client certificate for mutual TLS), read from files
//! into the client's rustls settings.

use std::fmt;
use std::path::{Path, PathBuf};

use leasehold_core::LockError;

/// The TLS option names every Redis scheme knows: `ca` (PEM file of the CA
/// certificates to trust instead of the built-in web roots), `cert` and
/// `key` (PEM files of the client certificate chain and its private key, for
/// servers that ask for one, `tls-auth-clients yes`).
pub const TLS_OPTIONS: &[&str] = &["ca", "cert", "key"];

/// The files a TLS connection is made with. Paths are shown by `Debug` and
/// in errors; the files' contents never are (the key is a secret).
///
/// ```
/// use leasehold_redis::TlsFiles;
/// let mut files = TlsFiles::default();
/// assert!(files.set("ca", "/etc/redis/ca.pem").unwrap());
/// assert!(!files.set("namespace", "x").unwrap());
/// // A certificate without its key is refused, before any file is read.
/// files.set("cert", "/etc/redis/client.pem").unwrap();
/// assert!(files.certificates().unwrap_err().to_string().contains("`key`"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `ca`: the CA certificates to trust (PEM).
    pub ca: Option<PathBuf>,
    /// `cert`: the client certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// `key`: the client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Takes option `name` if it is one of [`TLS_OPTIONS`] (`Ok(true)`);
    /// `Ok(false)` for any other name. An empty path is a
    /// [`LockError::Config`] naming the option.
    pub fn set(&mut self, name: &str, value: &str) -> Result<bool, LockError> {
        let slot = match name {
            "ca" => &mut self.ca,
            "cert" => &mut self.cert,
            "key" => &mut self.key,
            _ => return Ok(false),
        };
        if value.is_empty() {
            return Err(LockError::Config(format!(
                "redis option `{name}` needs a file path"
            )));
        }
        *slot = Some(PathBuf::from(value));
        Ok(true)
    }

    /// Whether no TLS file is given (the client then trusts the built-in
    /// web roots and sends no certificate).
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files into the client's certificate settings (`None` when
    /// none is given). `cert` without `key` (or the reverse), a file that
    /// cannot be read, or one without a PEM block is a
    /// [`LockError::Config`] naming the option and the path, never the
    /// contents.
    pub fn certificates(&self) -> Result<Option<redis::TlsCertificates>, LockError> {
        if self.is_empty() {
            return Ok(None);
        }
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem("cert", cert)?,
                client_key: read_pem("key", key)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(LockError::Config(
                    "redis option `cert` needs `key` (the client certificate's private key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(LockError::Config(
                    "redis option `key` needs `cert` (the client certificate)".into(),
                ));
            }
        };
        let root_cert = self
            .ca
            .as_deref()
            .map(|path| read_pem("ca", path))
            .transpose()?;
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }

    /// The client for `url` (a `rediss://` URL) with these files; the URL
    /// as it is when none is given. A plain `redis://` URL with TLS files is
    /// a [`LockError::Config`]: asking for certificates and getting
    /// plaintext must never pass silently. `shown` is the URL as errors may
    /// show it (password hidden).
    pub fn client(&self, url: &str, shown: &str) -> Result<redis::Client, LockError> {
        leasehold_core::tls::install_default_crypto_provider(); // rustls: ring unless the app chose
        let bad = |e: redis::RedisError| LockError::Config(format!("redis url {shown:?}: {e}"));
        let Some(certificates) = self.certificates()? else {
            return redis::Client::open(url).map_err(bad);
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(bad)?;
        if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            return Err(LockError::Config(format!(
                "redis url {shown:?}: the options {} need TLS: use rediss://",
                self.given().join(", ")
            )));
        }
        redis::Client::build_with_tls(info, certificates).map_err(|e| {
            // The client's message names the file's role (root certificate,
            // client certificate, private key) and the PEM error, never its
            // contents.
            LockError::Config(format!("redis url {shown:?}: TLS files {self:?}: {e}"))
        })
    }

    /// The TLS of a topology of several servers (`redis+sentinel://`,
    /// `redis+cluster://`), which turn TLS on with the `tls` option rather
    /// than a scheme (`on`): `None` when off, else the files' certificates
    /// (read now; `None` inside: the built-in web roots). Files without
    /// `tls=true` are a [`LockError::Config`], as on a `redis://` URL:
    /// asking for certificates never yields plaintext. `shown` is the URL
    /// as errors may show it.
    pub(crate) fn topology(&self, on: bool, shown: &str) -> Result<Option<TopologyTls>, LockError> {
        if !on {
            if self.is_empty() {
                return Ok(None);
            }
            return Err(LockError::Config(format!(
                "redis url {shown:?}: the options {} need TLS: add tls=true",
                self.given().join(", ")
            )));
        }
        Ok(Some(TopologyTls {
            certificates: self.certificates()?,
            files: self.clone(),
        }))
    }

    /// The names of the options given, in [`TLS_OPTIONS`] order.
    fn given(&self) -> Vec<String> {
        [(&self.ca, "ca"), (&self.cert, "cert"), (&self.key, "key")]
            .into_iter()
            .filter(|(path, _)| path.is_some())
            .map(|(_, name)| format!("`{name}`"))
            .collect()
    }
}

/// TLS to every server of a Sentinel or Cluster topology (sentinels,
/// masters, cluster nodes), with the certificates of the `ca`, `cert` and
/// `key` files, read when the URL was parsed. Every server's name is
/// checked against its certificate.
#[derive(Clone)]
pub(crate) struct TopologyTls {
    /// The CA to trust and the client certificate (`None`: the built-in
    /// web roots, no client certificate).
    pub(crate) certificates: Option<redis::TlsCertificates>,
    /// Where they came from (what `Debug` shows).
    files: TlsFiles,
}

/// Shows the files' paths, never their contents.
impl fmt::Debug for TopologyTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TopologyTls").field(&self.files).finish()
    }
}

/// Shows which files are given, by path.
impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// The bytes of the PEM file of option `name`; an unreadable file or one
/// without a PEM block is a [`LockError::Config`] naming both.
fn read_pem(name: &str, path: &Path) -> Result<Vec<u8>, LockError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LockError::Config(format!(
            "redis option `{name}`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(LockError::Config(format!(
            "redis option `{name}`: {} holds no PEM block",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_the_option_and_path() {
        let mut files = TlsFiles::default();
        files.set("ca", "/nonexistent/ca.pem").unwrap();
        let error = files.certificates().unwrap_err().to_string();
        assert!(
            error.contains("`ca`") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        assert!(files.set("key", "").is_err());
    }

    #[test]
    fn a_file_without_pem_is_refused_without_showing_it() {
        let dir = std::env::temp_dir().join(format!("leasehold-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        std::fs::write(&key, "top-secret-key-material").unwrap();
        let files = TlsFiles {
            cert: Some(cert),
            key: Some(key),
            ..TlsFiles::default()
        };
        let error = files.certificates().unwrap_err().to_string();
        assert!(error.contains("`key`"), "{error}");
        assert!(!error.contains("top-secret"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tls_files_on_a_plain_url_are_refused() {
        let dir = std::env::temp_dir().join(format!("leasehold-tls-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let files = TlsFiles {
            ca: Some(ca),
            ..TlsFiles::default()
        };
        let error = files
            .client("redis://127.0.0.1:6379", "redis://127.0.0.1:6379")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("rediss://") && error.contains("`ca`"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
