//! The `ca`, `cert` and `key` options of an `etcds://` URL: a private CA to
//! trust, and a client certificate for etcd's `--client-cert-auth` (mutual
//! TLS), read from PEM files into the etcd client's rustls settings.

use std::path::PathBuf;

use leasehold_core::LockError;

/// The option names of this module, in the order errors list them.
pub(crate) const TLS_OPTIONS: &[&str] = &["ca", "cert", "key"];

/// The PEM files a TLS connection is made with. `Debug` and errors show the
/// paths, never the files' contents (the key is a secret).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

impl TlsFiles {
    /// Takes URL option `name` if it is one of [`TLS_OPTIONS`]; an empty
    /// path is a `Config` error naming the option.
    pub(crate) fn set(&mut self, name: &str, value: &str) -> Result<bool, LockError> {
        let slot = match name {
            "ca" => &mut self.ca,
            "cert" => &mut self.cert,
            "key" => &mut self.key,
            _ => return Ok(false),
        };
        if value.is_empty() {
            return Err(LockError::Config(format!(
                "etcd option `{name}` needs a file path"
            )));
        }
        *slot = Some(PathBuf::from(value));
        Ok(true)
    }

    /// The options given, as `` `ca`, `key` `` for errors.
    pub(crate) fn given(&self) -> String {
        [(&self.ca, "ca"), (&self.cert, "cert"), (&self.key, "key")]
            .into_iter()
            .filter(|(path, _)| path.is_some())
            .map(|(_, name)| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether no file is given.
    pub(crate) fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// `cert` and `key` come together; checked before any file is read.
    pub(crate) fn check_pairs(&self) -> Result<(), LockError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(LockError::Config(
                "etcd option `cert` needs `key` (the client certificate's private key)".into(),
            )),
            (None, Some(_)) => Err(LockError::Config(
                "etcd option `key` needs `cert` (the client certificate)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The etcd client's TLS settings: the `ca` file's certificates as the
    /// only roots (the built-in web roots without it), and the client
    /// identity when `cert` and `key` are given. A missing or unreadable
    /// file, or one without a PEM block, is a `Config` error naming the
    /// option and the path.
    #[cfg(feature = "tls")]
    pub(crate) fn options(&self) -> Result<etcd_client::TlsOptions, LockError> {
        self.check_pairs()?;
        let mut options = etcd_client::TlsOptions::new();
        options = match &self.ca {
            Some(ca) => {
                options.ca_certificate(etcd_client::Certificate::from_pem(read_pem("ca", ca)?))
            }
            None => options.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            options = options.identity(etcd_client::Identity::from_pem(
                read_pem("cert", cert)?,
                read_pem("key", key)?,
            ));
        }
        Ok(options)
    }
}

/// The bytes of option `name`'s PEM file; an unreadable file or one
/// without a PEM block is a `Config` error naming both (never the bytes).
#[cfg(feature = "tls")]
fn read_pem(name: &str, path: &std::path::Path) -> Result<Vec<u8>, LockError> {
    let bytes = std::fs::read(path).map_err(|e| {
        LockError::Config(format!(
            "etcd option `{name}`: cannot read {}: {e}",
            path.display()
        ))
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(LockError::Config(format!(
            "etcd option `{name}`: {} holds no PEM block",
            path.display()
        )));
    }
    Ok(bytes)
}
