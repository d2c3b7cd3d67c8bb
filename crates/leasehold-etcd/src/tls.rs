//! The `ca`, `cert` and `key` options of an `etcds://` URL: a private CA to
//! trust, and a client certificate for etcd's `--client-cert-auth` (mutual
//! TLS). The options and the PEM reading are core's
//! [`TlsFiles`](leasehold_core::tls::TlsFiles), shared with every backend;
//! this module only turns the files into the etcd client's TLS settings.
//!
//! The etcd client (tonic 0.14, `tls-ring`) builds its rustls configuration
//! with `ClientConfig::builder_with_provider`: the process default when one
//! is installed, else `ring` explicitly. It never calls
//! `ClientConfig::builder()`, so it needs no process default and is safe in
//! a build with two rustls providers (see
//! [`leasehold_core::tls::install_default_crypto_provider`]).

#[cfg(feature = "tls")]
use leasehold_core::LockError;
#[cfg(feature = "tls")]
use leasehold_core::tls::TlsFiles;

/// The etcd client's TLS settings for `files`: the `ca` file's certificates
/// as the only roots (the built-in web roots without it), and the client
/// identity when `cert` and `key` are given. A missing or unreadable file,
/// or one without a PEM block, is a `Config` error naming the option and the
/// path, never the contents ([`TlsFiles::read`]).
#[cfg(feature = "tls")]
pub(crate) fn options(files: &TlsFiles) -> Result<etcd_client::TlsOptions, LockError> {
    let pem = files.read(crate::NAME)?;
    let mut options = etcd_client::TlsOptions::new();
    options = match pem.ca {
        Some(ca) => options.ca_certificate(etcd_client::Certificate::from_pem(ca)),
        None => options.with_webpki_roots(),
    };
    if let Some((cert, key)) = pem.identity {
        options = options.identity(etcd_client::Identity::from_pem(cert, key.expose()));
    }
    Ok(options)
}
