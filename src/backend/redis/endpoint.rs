//! Redis URLs: what they say, with the options of redis-py's URLs understood, and the
//! password masked in everything shown.

use std::time::Duration;

use redis::RedisError;

use crate::errors::{CacheError, CacheResult};

/// How to reach the server: what the URL says, with the query parameters that
/// redis-py also understands (`ssl_ca_certs`, `ssl_cert_reqs`, `socket_timeout`,
/// `socket_connect_timeout`) taken out.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The URL given to redis-rs.
    pub(crate) url: String,
    /// The URL with any password masked, for messages.
    pub shown: String,
    pub(crate) ca_file: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
}

fn seconds_param(name: &str, value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name}={value:?} in the URL must be a positive number of seconds"))
}

impl Endpoint {
    /// Parses a `redis://`, `rediss://` or `unix://` URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if !["redis://", "rediss://", "unix://"]
            .iter()
            .any(|s| url.starts_with(s))
        {
            return Err("expected a URL starting with redis://, rediss:// or unix://".into());
        }
        let (head, fragment) = match url.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (url, None),
        };
        let (base, query) = head.split_once('?').unwrap_or((head, ""));
        let mut kept = Vec::new();
        let mut ep = Endpoint {
            url: String::new(),
            shown: mask_password(url),
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
        };
        let mut insecure = fragment == Some("insecure");
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "ssl_ca_certs" => ep.ca_file = Some(v.to_owned()),
                "ssl_cert_reqs" => match v.to_ascii_lowercase().as_str() {
                    "none" => insecure = true,
                    "required" | "optional" => {}
                    _ => {
                        return Err(format!(
                            "ssl_cert_reqs={v:?} in the URL must be none, optional or required"
                        ))
                    }
                },
                "socket_timeout" => ep.command_timeout = seconds_param(k, v)?,
                "socket_connect_timeout" => ep.connect_timeout = seconds_param(k, v)?,
                _ => kept.push(pair),
            }
        }
        let mut rebuilt = base.to_owned();
        if !kept.is_empty() {
            rebuilt.push('?');
            rebuilt.push_str(&kept.join("&"));
        }
        if insecure {
            rebuilt.push_str("#insecure");
        }
        ep.url = rebuilt;
        // redis-rs checks the rest (host, port, database number).
        redis::IntoConnectionInfo::into_connection_info(ep.url.as_str())
            .map_err(|e| format!("it is not a valid Redis URL ({e})"))?;
        Ok(ep)
    }

    /// A client that speaks RESP3 (push messages: the near cache's invalidations).
    pub(crate) fn resp3_client(&self) -> CacheResult<redis::Client> {
        let (head, fragment) = match self.url.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (self.url.as_str(), None),
        };
        let (base, query) = head.split_once('?').unwrap_or((head, ""));
        let mut params: Vec<&str> = query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("protocol="))
            .collect();
        params.push("protocol=resp3");
        let mut url = format!("{base}?{}", params.join("&"));
        if let Some(f) = fragment {
            url.push('#');
            url.push_str(f);
        }
        Endpoint {
            url,
            ..self.clone()
        }
        .client()
    }

    pub(crate) fn client(&self) -> CacheResult<redis::Client> {
        let fail = |e: RedisError| CacheError::Backend(format!("Redis at {}: {e}", self.shown));
        if self.url.starts_with("rediss://") {
            // rustls needs one process-wide crypto provider; another library may have
            // installed one already, which is as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match &self.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    CacheError::Backend(format!(
                        "Redis at {}: cannot read ssl_ca_certs file {path:?}: {e}",
                        self.shown
                    ))
                })?;
                redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(fail)
            }
            None => redis::Client::open(self.url.as_str()).map_err(fail),
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, and the value of every
/// `sentinel_password=` option masked too.
pub(crate) fn mask_password(url: &str) -> String {
    let masked = mask_authority(url);
    let Some((base, rest)) = masked.split_once('?') else {
        return masked;
    };
    let (query, fragment) = rest.split_at(rest.find('#').unwrap_or(rest.len()));
    let pairs: Vec<&str> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("sentinel_password", _)) => "sentinel_password=***",
            _ => pair,
        })
        .collect();
    format!("{base}?{}{fragment}", pairs.join("&"))
}

/// `url` with the password of its authority masked.
fn mask_authority(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let auth = &rest[..at];
            let user = auth.split_once(':').map_or(auth, |(u, _)| u);
            let masked = if auth.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}
