//! `redlock://[user][:password@]h1:p1,h2:p2,h3:p3[/db][?options]`.

use leasehold_core::LockError;
use leasehold_core::config::redact_url;

/// A parsed Redlock URL: one `redis://` (or `rediss://`) URL per server and
/// the options from the query.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParsedUrl {
    pub nodes: Vec<String>,
    pub options: Vec<(String, String)>,
}

/// Splits a Redlock URL into per-server Redis URLs. The credentials and the
/// database apply to every server; `tls=true` makes them `rediss://`.
pub(crate) fn parse(url: &str) -> Result<ParsedUrl, LockError> {
    // Errors show the URL with its password hidden (even when malformed).
    let bad = |why: &str| LockError::Config(format!("redlock url {:?}: {why}", redact_url(url)));
    let rest = url
        .strip_prefix("redlock://")
        .ok_or_else(|| bad("the scheme must be redlock://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(bad("the path must be a database number"));
    }
    let mut options = Vec::new();
    let mut scheme = "redis";
    // Query values are form-decoded (`%2F`, and `+` for a space), as the
    // facade encodes them; the credentials (userinfo) are not touched here.
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if name == "tls" {
            scheme = if leasehold_core::config::boolean(&name, &value)? {
                "rediss"
            } else {
                "redis"
            };
        } else {
            options.push((name.into_owned(), value.into_owned()));
        }
    }
    let mut nodes = Vec::new();
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(bad("a server address is empty (two commas, or none given)"));
        }
        if host.contains(['/', '?', '#', '@']) {
            return Err(bad("a server address contains a URL delimiter"));
        }
        let mut node = format!("{scheme}://");
        if let Some(userinfo) = userinfo {
            node.push_str(userinfo);
            node.push('@');
        }
        node.push_str(host);
        if !path.is_empty() {
            node.push('/');
            node.push_str(path);
        }
        nodes.push(node);
    }
    Ok(ParsedUrl { nodes, options })
}

/// A fraction option (`0.05`), at least 0 and below 1.
pub(crate) fn fraction(name: &str, value: &str) -> Result<f64, LockError> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(leasehold_core::config::invalid(
            name,
            value,
            "expected a number from 0 up to (not including) 1",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_gets_the_credentials_database_and_tls_of_the_url() {
        let parsed =
            parse("redlock://app:s%40cret@h1:6379,h2:6380,h3/2?namespace=billing&tls=true")
                .unwrap();
        assert_eq!(
            parsed.nodes,
            [
                "rediss://app:s%40cret@h1:6379/2",
                "rediss://app:s%40cret@h2:6380/2",
                "rediss://app:s%40cret@h3/2"
            ]
        );
        assert_eq!(parsed.options, [("namespace".into(), "billing".into())]);
    }

    #[test]
    fn plain_hosts_without_options_parse() {
        let parsed = parse("redlock://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").unwrap();
        assert_eq!(parsed.nodes.len(), 3);
        assert_eq!(parsed.nodes[0], "redis://127.0.0.1:1");
        assert!(parsed.options.is_empty());
    }

    #[test]
    fn malformed_urls_are_config_errors_that_hide_the_password() {
        for url in [
            "redis://h1:1",
            "redlock://",
            "redlock://h1:1,,h2:2",
            "redlock://h1:1/notadb",
            "redlock://h1:1?tls=maybe",
            "redlock:/u:pw@h1:1",
        ] {
            assert!(
                matches!(parse(url), Err(LockError::Config(_))),
                "{url} parsed"
            );
        }
        let error = parse("redlock://u:hunter2@h1:1/x").unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn query_values_are_form_decoded() {
        let parsed = parse("redlock://h1:1?namespace=a%2Fb+c&tls=false").unwrap();
        assert_eq!(parsed.options, [("namespace".into(), "a/b c".into())]);
        assert_eq!(parsed.nodes, ["redis://h1:1"]);
    }

    #[test]
    fn fractions_stay_below_one() {
        assert!(fraction("f", "0.05").is_ok());
        assert!(fraction("f", "1.5").is_err());
    }
}
