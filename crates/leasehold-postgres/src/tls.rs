//! The TLS options of a `postgres://` URL, by libpq's names: `sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey` (and sqlx's aliases of them). They
//! pass through to sqlx, which speaks TLS with rustls; leasehold checks them
//! first, so a misspelt mode or an unreadable file is a
//! [`LockError::Config`] at parse time instead of a connection error later.

use std::path::Path;

use leasehold_core::LockError;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// libpq's `sslmode` values. sqlx connects with `allow` as with `disable`
/// (plaintext).
pub const SSL_MODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// The spellings of each option: libpq's name first, then sqlx's aliases.
const MODE: &[&str] = &["sslmode", "ssl-mode"];
const ROOT_CERT: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];
const CLIENT_CERT: &[&str] = &["sslcert", "ssl-cert"];
const CLIENT_KEY: &[&str] = &["sslkey", "ssl-key"];

/// What a file option must hold.
#[derive(Clone, Copy)]
enum Pem {
    /// CA certificates a verifier can use as trust anchors.
    Roots,
    /// A certificate chain.
    Chain,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    Key,
}

/// Checks the TLS options among the query pairs sqlx will get, and applies
/// libpq's rule that `sslmode=require` with `sslrootcert` verifies the
/// server's certificate (as `verify-ca`; sqlx alone would not). An unknown
/// mode, an empty path, a file that cannot be read or holds no usable PEM,
/// or `sslcert` without `sslkey` (or the reverse) is a
/// [`LockError::Config`] naming the option and the path, never the file's
/// contents. When an option is given twice the last one counts, as in sqlx.
pub(crate) fn check(pairs: &mut [(String, String)]) -> Result<(), LockError> {
    let last = |pairs: &[(String, String)], names: &[&str]| {
        pairs
            .iter()
            .rposition(|(name, _)| names.contains(&name.as_str()))
    };
    if let Some(at) = last(pairs, MODE) {
        let (name, value) = &pairs[at];
        if !SSL_MODES.contains(&value.as_str()) {
            return Err(LockError::Config(format!(
                "postgres option `{name}` must be one of {}, not {value:?}",
                SSL_MODES.join(", ")
            )));
        }
    }
    for (names, pem) in [
        (ROOT_CERT, Pem::Roots),
        (CLIENT_CERT, Pem::Chain),
        (CLIENT_KEY, Pem::Key),
    ] {
        if let Some(at) = last(pairs, names) {
            let (name, path) = &pairs[at];
            check_file(name, Path::new(path), pem)?;
        }
    }
    match (last(pairs, CLIENT_CERT), last(pairs, CLIENT_KEY)) {
        (Some(at), None) => {
            return Err(LockError::Config(format!(
                "postgres option `{}` needs `sslkey` (the client certificate's private key)",
                pairs[at].0
            )));
        }
        (None, Some(at)) => {
            return Err(LockError::Config(format!(
                "postgres option `{}` needs `sslcert` (the client certificate)",
                pairs[at].0
            )));
        }
        _ => {}
    }
    if let (Some(mode), Some(_)) = (last(pairs, MODE), last(pairs, ROOT_CERT))
        && pairs[mode].1 == "require"
    {
        pairs[mode].1 = "verify-ca".into();
    }
    Ok(())
}

/// Reads the file of option `name` and checks that it holds what the option
/// needs. Errors name the option and the path; a key file's contents never
/// appear (not even the PEM parser's message, which may quote a line).
fn check_file(name: &str, path: &Path, pem: Pem) -> Result<(), LockError> {
    let bad = |why: String| {
        LockError::Config(format!(
            "postgres option `{name}`: {}: {why}",
            path.display()
        ))
    };
    if path.as_os_str().is_empty() {
        return Err(LockError::Config(format!(
            "postgres option `{name}` needs a file path"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it ({e})")))?;
    match pem {
        Pem::Key => PrivateKeyDer::from_pem_slice(&bytes)
            .map(drop)
            .map_err(|_| bad("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".into())),
        Pem::Chain | Pem::Roots => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad("is not valid PEM".into()))?;
            if certs.is_empty() {
                return Err(bad("holds no PEM certificate".into()));
            }
            if let Pem::Roots = pem {
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("holds a certificate unfit to trust ({e})")))?;
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn config_error(list: &[(&str, &str)]) -> String {
        match check(&mut pairs(list)) {
            Err(LockError::Config(message)) => message,
            other => panic!("{list:?}: expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_sslmode_is_refused_listing_the_known_ones() {
        let message = config_error(&[("sslmode", "verify_full")]);
        assert!(
            message.contains("`sslmode`") && message.contains("verify-full"),
            "{message}"
        );
        for mode in SSL_MODES {
            check(&mut pairs(&[("ssl-mode", mode)])).expect("a libpq mode");
        }
    }

    #[test]
    fn a_missing_file_names_the_option_and_the_path() {
        for name in ["sslrootcert", "ssl-ca", "sslcert", "sslkey"] {
            let message = config_error(&[(name, "/nonexistent/leasehold/x.pem")]);
            assert!(
                message.contains(&format!("`{name}`"))
                    && message.contains("/nonexistent/leasehold/x.pem"),
                "{message}"
            );
        }
        assert!(config_error(&[("sslrootcert", "")]).contains("needs a file path"));
    }

    #[test]
    fn a_file_without_the_right_pem_is_refused_without_showing_it() {
        let dir = std::env::temp_dir().join(format!("leasehold-pg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PRIVATE KEY-----\ntop-secret\n").unwrap();
        let shown = garbage.to_str().unwrap();
        for name in ["sslrootcert", "sslcert", "sslkey"] {
            let message = config_error(&[(name, shown), ("sslcert", shown), ("sslkey", shown)]);
            assert!(!message.contains("top-secret"), "{message}");
            assert!(message.contains(shown), "{message}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
