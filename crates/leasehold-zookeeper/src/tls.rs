//! Dialling the ensemble: plaintext for `zk://`, TLS for `zks://` (the `tls`
//! feature) with the `ca`, `cert` and `key` files of [`ZkConfig`].

use leasehold_core::LockError;
use zookeeper_client::{Client, Connector};

#[cfg(feature = "tls")]
use crate::NAME;
use crate::ZkConfig;

/// Connects `connector` to `options`' ensemble, with TLS when they ask for
/// it. The outer error is configuration (a TLS file, TLS without the
/// feature, a host name TLS cannot check), found before any connection is
/// tried; the inner one is the client's.
pub(crate) async fn dial(
    connector: Connector,
    options: &ZkConfig,
) -> Result<Result<Client, zookeeper_client::Error>, LockError> {
    if !options.tls {
        return Ok(connector.connect(&options.hosts).await);
    }
    #[cfg(feature = "tls")]
    {
        let connector = connector.with_tls(client_options(options)?);
        Ok(connector.secure_connect(&options.hosts).await)
    }
    #[cfg(not(feature = "tls"))]
    Err(LockError::Config(
        "TLS to ZooKeeper (zks://) needs leasehold-zookeeper's cargo feature `tls` \
         (leasehold's `zookeeper-tls`), which is off in this build"
            .into(),
    ))
}

/// The client's TLS settings: the `ca` file's certificates as the only roots
/// (required: `zookeeper-client` has no built-in roots, and ZooKeeper
/// ensembles run on private CAs), and the client identity when `cert` and
/// `key` are given. Every host must be a name or address a certificate can
/// be checked against (the client would panic on another), and none may ask
/// for plaintext (`tcp://`).
#[cfg(feature = "tls")]
fn client_options(options: &ZkConfig) -> Result<zookeeper_client::TlsOptions, LockError> {
    leasehold_core::tls::install_default_crypto_provider();
    check_hosts(&options.hosts)?;
    let files = &options.tls_files;
    let pem = files.read(NAME)?;
    let (Some(ca), Some(ca_path)) = (pem.ca, &files.ca) else {
        return Err(LockError::Config(
            "TLS to ZooKeeper needs the `ca` option (PEM file of the CA that signed the \
             servers' certificates): the client has no built-in roots"
                .into(),
        ));
    };
    let mut tls = zookeeper_client::TlsOptions::new()
        .with_pem_ca(&ca)
        .map_err(|e| {
            LockError::Config(format!("{NAME} option `ca`: {}: {e}", ca_path.display()))
        })?;
    if let (Some((cert, key)), Some(cert_path), Some(key_path)) =
        (pem.identity, &files.cert, &files.key)
    {
        tls = tls.with_pem_identity(&cert, key.expose()).map_err(|e| {
            LockError::Config(format!(
                "{NAME} options `cert` and `key`: {} and {}: {e}",
                cert_path.display(),
                key_path.display()
            ))
        })?;
    }
    Ok(tls)
}

/// Each `host[:port]` of `hosts` is a DNS name or an IP address (what the
/// server's certificate is checked against) and none is `tcp://`.
#[cfg(feature = "tls")]
fn check_hosts(hosts: &str) -> Result<(), LockError> {
    for entry in hosts.split(',') {
        let entry = entry.trim();
        let address = entry.strip_prefix("tcp+tls://").unwrap_or(entry);
        let host = match address.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => address.rsplit_once(':').map_or(address, |(host, _)| host),
        };
        if address.contains("://")
            || rustls_pki_types::ServerName::try_from(host.to_owned()).is_err()
        {
            return Err(LockError::Config(format!(
                "ZooKeeper host {entry:?} cannot be reached with TLS: a TLS host is a DNS name \
                 or an IP address, with an optional port"
            )));
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    #[test]
    fn tls_hosts_are_names_or_addresses_and_never_plaintext() {
        check_hosts("zk1.internal:2281,10.0.0.5:2281,[::1]:2281,zk2,tcp+tls://zk3:1").unwrap();
        for bad in [
            "tcp://zk1:2281",
            "zk 1:2281",
            "a:1,:3",
            "tcp+tls://tcp://a:1",
        ] {
            let error = check_hosts(bad).unwrap_err();
            assert!(
                matches!(&error, LockError::Config(m) if m.contains("cannot be reached with TLS")),
                "{bad}: {error:?}"
            );
        }
    }
}
