//! `redis+sentinel://[user[:password]@]s1:26379,s2:26379,s3:26379/master[/db]`:
//! where the sentinels are, the master's name, and how to log in to the
//! master the sentinels name.

use std::fmt;

use leasehold_core::LockError;
use redis::sentinel::{
    SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType,
};
use redis::{IntoConnectionInfo, RedisConnectionInfo, TlsMode};

use crate::tls::TopologyTls;

/// The default Sentinel port, for a sentinel address without one.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// The sentinels and the master name of a `redis+sentinel://` URL.
#[derive(Clone)]
pub struct SentinelTarget {
    /// `host:port` of each sentinel, in the order they are asked.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    pub master: String,
    /// Credentials, database and protocol for the master (and its
    /// successors); the sentinels themselves are reached without them.
    pub(crate) redis: RedisConnectionInfo,
    /// TLS to the sentinels and the masters (`tls=true`), else plaintext.
    pub(crate) tls: Option<TopologyTls>,
}

impl SentinelTarget {
    /// Parses the part of a `redis+sentinel://` URL before `?`; `shown` is
    /// the URL as errors may show it. `passed` are options for the master's
    /// connection (`protocol`); `tls`: TLS to the sentinels and masters.
    pub(crate) fn parse(
        base: &str,
        shown: &str,
        passed: &[(String, String)],
        tls: Option<TopologyTls>,
    ) -> Result<Self, LockError> {
        let bad = |why: &str| LockError::Config(format!("redis url {shown:?}: {why}"));
        let rest = base
            .split_once("://")
            .map(|(_, rest)| rest)
            .ok_or_else(|| bad("expected redis+sentinel://sentinels/master"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| {
            bad("the master's name is missing (redis+sentinel://s1,s2,s3/master)")
        })?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (master, db) = match path.split_once('/') {
            Some((master, db)) => (master, Some(db)),
            None => (path, None),
        };
        if master.is_empty() {
            return Err(bad(
                "the master's name is missing (redis+sentinel://s1,s2,s3/master)",
            ));
        }
        let master = url::form_urlencoded::parse(format!("m={master}").as_bytes())
            .next()
            .map(|(_, m)| m.into_owned())
            .unwrap_or_default();
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() || host.contains(['?', '#', '@']) {
                return Err(bad("a sentinel address is empty or malformed"));
            }
            let with_port = if host
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                host.to_owned()
            } else {
                format!("{host}:{DEFAULT_SENTINEL_PORT}")
            };
            sentinels.push(with_port);
        }
        // The master's login, database and protocol, parsed by the client
        // from a URL of the same shape (percent-decoding included).
        let mut login = String::from("redis://");
        if let Some(userinfo) = userinfo {
            login.push_str(userinfo);
            login.push('@');
        }
        login.push_str("master");
        if let Some(db) = db.filter(|db| !db.is_empty()) {
            if db.parse::<u32>().is_err() {
                return Err(bad(
                    "the path after the master's name must be a database number",
                ));
            }
            login.push('/');
            login.push_str(db);
        }
        if !passed.is_empty() {
            login.push('?');
            login.push_str(
                &url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(passed)
                    .finish(),
            );
        }
        let redis = login
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?
            .redis_settings()
            .clone();
        Ok(SentinelTarget {
            sentinels,
            master,
            redis,
            tls,
        })
    }

    /// A Sentinel client for the master (nothing is contacted). Under TLS
    /// the sentinels and every master they name are reached with it, with
    /// the same CA and client certificate.
    pub(crate) fn client(&self) -> Result<SentinelClient, LockError> {
        let bad = |e: redis::RedisError| {
            LockError::Config(format!("redis sentinels {:?}: {e}", self.sentinels))
        };
        let Some(tls) = &self.tls else {
            let sentinels: Vec<String> = self
                .sentinels
                .iter()
                .map(|host| format!("redis://{host}"))
                .collect();
            let node =
                SentinelNodeConnectionInfo::default().set_redis_connection_info(self.redis.clone());
            return SentinelClient::build(
                sentinels,
                self.master.clone(),
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(bad);
        };
        let sentinels = self
            .sentinels
            .iter()
            .map(|host| {
                format!("rediss://{host}")
                    .into_connection_info()
                    .map(|info| info.addr().clone())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let mut builder =
            SentinelClientBuilder::new(sentinels, &self.master, SentinelServerType::Master)
                .map_err(bad)?
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_redis_db(self.redis.db())
                .set_client_to_redis_protocol(self.redis.protocol());
        if let Some(user) = self.redis.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = self.redis.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(certificates) = &tls.certificates {
            builder = builder
                .set_client_to_sentinel_certificates(certificates.clone())
                .set_client_to_redis_certificates(certificates.clone());
        }
        builder.build().map_err(bad)
    }
}

/// Shows the sentinels and the master name, never the password.
impl fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.redis.db())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinels_master_login_and_database_come_from_the_url() {
        let target = SentinelTarget::parse(
            "redis+sentinel://app:s%40cret@s1,s2:26380,10.0.0.3:1/my%20master/3",
            "shown",
            &[],
            None,
        )
        .unwrap();
        assert_eq!(target.sentinels, ["s1:26379", "s2:26380", "10.0.0.3:1"]);
        assert_eq!(target.master, "my master");
        assert_eq!(target.redis.db(), 3);
        assert_eq!(target.redis.username(), Some("app"));
        assert_eq!(target.redis.password(), Some("s@cret"));
        assert!(!format!("{target:?}").contains("cret"));
    }

    #[test]
    fn a_missing_master_or_sentinel_is_a_config_error() {
        for url in [
            "redis+sentinel://s1,s2",
            "redis+sentinel://s1,s2/",
            "redis+sentinel://s1,,s2/m",
            "redis+sentinel://s1/m/notadb",
        ] {
            assert!(
                matches!(
                    SentinelTarget::parse(url, url, &[], None),
                    Err(LockError::Config(_))
                ),
                "{url} parsed"
            );
        }
    }
}
