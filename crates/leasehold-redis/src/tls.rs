//! TLS for Redis: the `ca`, `cert` and `key` options of a `rediss://` URL
//! (a private CA, and a client certificate for mutual TLS) are core's
//! [`TlsFiles`], shared with every backend (option names, PEM reading and
//! its errors); this module turns them into redis-rs's certificate settings
//! ([`tls_certificates`]) and a client ([`tls_client`]).
//!
//! Every Redis TLS path (one server, `redis+sentinel://` and
//! `redis+cluster://` with `tls=true`, the sharded pub/sub connection, the
//! Redlock servers) goes through [`tls_certificates`], which first installs
//! the process-default rustls provider
//! ([`install_default_crypto_provider`](leasehold_core::tls::install_default_crypto_provider)):
//! redis-rs builds its configuration with `rustls::ClientConfig::builder()`,
//! which panics in a build with two rustls providers and no default.

use std::fmt;

use leasehold_core::LockError;

/// The TLS option names every Redis scheme knows: `ca` (PEM file of the CA
/// certificates to trust instead of the built-in web roots), `cert` and
/// `key` (PEM files of the client certificate chain and its private key, for
/// servers that ask for one, `tls-auth-clients yes`). Core's list.
pub use leasehold_core::tls::TLS_OPTIONS;

/// The files a TLS connection is made with (core's type: paths are shown by
/// `Debug` and in errors; the files' contents never are).
///
/// ```
/// use leasehold_redis::{TlsFiles, tls_certificates};
/// let mut files = TlsFiles::default();
/// assert!(files.set("redis", "ca", "/etc/redis/ca.pem").unwrap());
/// assert!(!files.set("redis", "namespace", "x").unwrap());
/// // A certificate without its key is refused, before any file is read.
/// files.set("redis", "cert", "/etc/redis/client.pem").unwrap();
/// assert!(tls_certificates(&files).unwrap_err().to_string().contains("`key`"));
/// ```
pub use leasehold_core::tls::TlsFiles;

/// Reads `files` into redis-rs's certificate settings (`None` when none is
/// given: the built-in web roots, no client certificate). `cert` without
/// `key` (or the reverse), a file that cannot be read, or one without a PEM
/// block is a [`LockError::Config`] naming the option and the path, never
/// the contents ([`TlsFiles::read`]).
///
/// Every Redis TLS client is built after this call, and it installs
/// rustls's process-default provider first (`ring`, unless the application
/// installed one): the rule that keeps redis-rs's
/// `rustls::ClientConfig::builder()` from panicking in a build with two
/// providers. It does so even when no file is given (`rediss://` with the
/// web roots still builds a rustls configuration).
pub fn tls_certificates(files: &TlsFiles) -> Result<Option<redis::TlsCertificates>, LockError> {
    leasehold_core::tls::install_default_crypto_provider();
    if files.is_empty() {
        return Ok(None);
    }
    let pem = files.read(crate::NAME)?;
    Ok(Some(redis::TlsCertificates {
        client_tls: pem.identity.map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.into_bytes(),
            client_key: key.expose().as_bytes().to_vec(),
        }),
        root_cert: pem.ca.map(String::into_bytes),
    }))
}

/// The client for `url` (a `rediss://` URL) with `files`; the URL as it is
/// when none is given. A plain `redis://` URL with TLS files is a
/// [`LockError::Config`]: asking for certificates and getting plaintext must
/// never pass silently. `shown` is the URL as errors may show it (password
/// hidden). Goes through [`tls_certificates`] (the provider rule) whatever
/// the URL.
pub fn tls_client(files: &TlsFiles, url: &str, shown: &str) -> Result<redis::Client, LockError> {
    let bad = |e: redis::RedisError| LockError::Config(format!("redis url {shown:?}: {e}"));
    let Some(certificates) = tls_certificates(files)? else {
        return redis::Client::open(url).map_err(bad);
    };
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(bad)?;
    if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(LockError::Config(format!(
            "redis url {shown:?}: the options {} need TLS: use rediss://",
            files.given()
        )));
    }
    redis::Client::build_with_tls(info, certificates).map_err(|e| {
        // The client's message names the file's role (root certificate,
        // client certificate, private key) and the PEM error, never its
        // contents.
        LockError::Config(format!("redis url {shown:?}: TLS files {files:?}: {e}"))
    })
}

/// The TLS of a topology of several servers (`redis+sentinel://`,
/// `redis+cluster://`), which turn TLS on with the `tls` option rather than
/// a scheme (`on`): `None` when off, else the files' certificates (read now,
/// through [`tls_certificates`]; `None` inside: the built-in web roots).
/// Files without `tls=true` are a [`LockError::Config`], as on a `redis://`
/// URL: asking for certificates never yields plaintext. `shown` is the URL
/// as errors may show it.
pub(crate) fn topology(
    files: &TlsFiles,
    on: bool,
    shown: &str,
) -> Result<Option<TopologyTls>, LockError> {
    if !on {
        if files.is_empty() {
            return Ok(None);
        }
        return Err(LockError::Config(format!(
            "redis url {shown:?}: the options {} need TLS: add tls=true",
            files.given()
        )));
    }
    Ok(Some(TopologyTls {
        certificates: tls_certificates(files)?,
        files: files.clone(),
    }))
}

/// TLS to every server of a Sentinel or Cluster topology (sentinels,
/// masters, cluster nodes), with the certificates of the `ca`, `cert` and
/// `key` files, read when the URL was parsed. Every server's name is
/// checked against its certificate. Made only by [`topology`], so the
/// rustls provider is installed before any of its clients is built.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_names_the_option_and_path() {
        let mut files = TlsFiles::default();
        files.set("redis", "ca", "/nonexistent/ca.pem").unwrap();
        let error = tls_certificates(&files).unwrap_err().to_string();
        assert!(
            error.contains("`ca`") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        assert!(files.set("redis", "key", "").is_err());
    }

    #[test]
    fn a_file_without_pem_is_refused_without_showing_it() {
        let dir = std::env::temp_dir().join(format!("leasehold-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        std::fs::write(&key, "top-secret-key-material").unwrap();
        let mut files = TlsFiles::default();
        files.cert = Some(cert);
        files.key = Some(key);
        let error = tls_certificates(&files).unwrap_err().to_string();
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
        let mut files = TlsFiles::default();
        files.ca = Some(ca);
        let error = tls_client(&files, "redis://127.0.0.1:6379", "redis://127.0.0.1:6379")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("rediss://") && error.contains("`ca`"),
            "{error}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
