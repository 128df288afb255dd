//! What a Redis URL names: one server (`redis://`, `rediss://`, `unix://`), a Redis
//! Cluster found from its seed nodes (`redis+cluster://h1:7000,h2:7001/0`), or the
//! master that Sentinel knows by a name (`redis+sentinel://h1:26379,h2:26379/mymaster/0`).
//! The `+cluster` and `+sentinel` forms take `rediss` for TLS and the same query
//! options as a single server's URL, which then apply to every node. Each node is
//! reached by the URL of a single server, made here ([`Layout::node_url`]), so that
//! everything a single server's URL says (timeouts, CA file, cert checks, password)
//! holds for every node. The sentinels of a Sentinel URL are asked without a password
//! unless the URL gives theirs: `?sentinel_password=...` (and `sentinel_username=`).

use super::endpoint::{mask_password, Endpoint};

/// How the servers of a URL are arranged.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Single,
    /// `host:port` of the seed nodes.
    Cluster(Vec<String>),
    /// `host:port` of the sentinels, and the name of the master they watch.
    Sentinel(Vec<String>, String),
}

/// A parsed URL: its shape and what every node's URL is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub shape: Shape,
    /// The URL with any password masked, for messages.
    pub shown: String,
    /// `redis` or `rediss`.
    scheme: &'static str,
    /// `user:password@`, or empty.
    auth: String,
    db: String,
    /// `?...#...`: the options of every node, as given.
    tail: String,
    /// `user:password@` that the sentinels ask for, or empty.
    sentinel_auth: String,
}

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

impl Layout {
    /// Parses any URL this library accepts; a single server's URL is checked by
    /// [`Endpoint::parse`], a node list here and then each node's URL there.
    pub fn parse(url: &str) -> Result<Layout, String> {
        let (scheme, sentinel, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
            ("redis", false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            ("rediss", false, rest)
        } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            ("redis", true, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            ("rediss", true, rest)
        } else {
            Endpoint::parse(url).map_err(|e| {
                if e.starts_with("expected") {
                    "expected a URL starting with redis://, rediss://, unix://, \
                     redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
                        .to_owned()
                } else {
                    e
                }
            })?;
            return Ok(Layout {
                shape: Shape::Single,
                shown: mask_password(url),
                scheme: "redis",
                auth: String::new(),
                db: String::new(),
                tail: String::new(),
                sentinel_auth: String::new(),
            });
        };
        let cut = rest.find(['?', '#']).unwrap_or(rest.len());
        let (head, tail) = rest.split_at(cut);
        let (tail, sentinel_auth) = sentinel_auth(tail)?;
        if !sentinel && !sentinel_auth.is_empty() {
            return Err("sentinel_password and sentinel_username are options of a \
                        redis+sentinel:// URL"
                .to_owned());
        }
        let (authority, path) = head.split_once('/').unwrap_or((head, ""));
        let (auth, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let default_port = if sentinel {
            DEFAULT_SENTINEL_PORT
        } else {
            DEFAULT_PORT
        };
        let nodes = hosts
            .split(',')
            .map(|h| host_port(h, default_port))
            .collect::<Result<Vec<_>, _>>()?;
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let (shape, db) = if sentinel {
            let master = segments.next().ok_or(
                "a Sentinel URL names the master after the sentinels: \
                 redis+sentinel://host:26379,host2:26379/mymaster/0",
            )?;
            (
                Shape::Sentinel(nodes, master.to_owned()),
                segments.next().unwrap_or("0"),
            )
        } else {
            let db = segments.next().unwrap_or("0");
            if db != "0" {
                return Err(format!("a Redis Cluster has only database 0, not {db:?}"));
            }
            (Shape::Cluster(nodes), db)
        };
        if segments.next().is_some() || db.parse::<u32>().is_err() {
            return Err(format!("{path:?} after the nodes is not a database number"));
        }
        let layout = Layout {
            shape,
            shown: mask_password(url),
            scheme,
            auth: auth.to_owned(),
            db: db.to_owned(),
            tail,
            sentinel_auth,
        };
        // Every node's URL must be one a single server would accept.
        for node in layout.nodes() {
            Endpoint::parse(&layout.node_url(node))?;
        }
        Ok(layout)
    }

    /// The nodes the URL names (seeds or sentinels); none for a single server.
    pub fn nodes(&self) -> &[String] {
        match &self.shape {
            Shape::Single => &[],
            Shape::Cluster(nodes) | Shape::Sentinel(nodes, _) => nodes,
        }
    }

    /// The URL of one data node (a cluster's master, Sentinel's master) at `address`
    /// (`host:port`): the URL's scheme, password, database and options.
    pub fn node_url(&self, address: &str) -> String {
        format!(
            "{}://{}{address}/{}{}",
            self.scheme, self.auth, self.db, self.tail
        )
    }

    /// The URL of a sentinel: the URL's scheme and options, and the sentinels'
    /// credentials if the URL gives them (the URL's own password is the master's).
    pub fn sentinel_url(&self, address: &str) -> String {
        format!(
            "{}://{}{address}/0{}",
            self.scheme, self.sentinel_auth, self.tail
        )
    }

    /// Whether the URL gives the sentinels' password.
    pub fn sentinels_have_password(&self) -> bool {
        !self.sentinel_auth.is_empty()
    }
}

/// `tail` (`?...#...`) without `sentinel_password` and `sentinel_username`, and the
/// `user:password@` they make (empty without them). Values stay percent-encoded, as a
/// password in a URL's authority is.
fn sentinel_auth(tail: &str) -> Result<(String, String), String> {
    let (query, fragment) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    let (mut user, mut password) = (None, None);
    let mut kept = Vec::new();
    for pair in query
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("sentinel_password", v)) => password = Some(v),
            Some(("sentinel_username", v)) => user = Some(v),
            _ => kept.push(pair),
        }
    }
    let auth = match (user, password) {
        (None, None) => String::new(),
        (Some(_), None) => return Err("sentinel_username needs a sentinel_password".to_owned()),
        (user, Some(p)) => format!("{}:{p}@", user.unwrap_or("")),
    };
    let mut out = String::new();
    if !kept.is_empty() {
        out = format!("?{}", kept.join("&"));
    }
    out.push_str(fragment);
    Ok((out, auth))
}

/// `host:port` (`[v6]:port`), with the default port if none is given.
fn host_port(text: &str, default_port: u16) -> Result<String, String> {
    let bad = || format!("{text:?} is not a host:port");
    if text.is_empty() {
        return Err("a node list has an empty entry".to_owned());
    }
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (format!("[{h}]"), after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => default_port,
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_their_seeds_and_options() {
        let l =
            Layout::parse("rediss+cluster://u:pw@h1:7000,h2/0?ssl_cert_reqs=none&socket_timeout=2")
                .unwrap();
        assert_eq!(
            l.shape,
            Shape::Cluster(vec!["h1:7000".into(), "h2:6379".into()])
        );
        assert_eq!(
            l.node_url("10.0.0.1:7002"),
            "rediss://u:pw@10.0.0.1:7002/0?ssl_cert_reqs=none&socket_timeout=2"
        );
        assert!(l.shown.contains("u:***@"), "{}", l.shown);
        assert!(Layout::parse("redis+cluster://h1:7000/3")
            .unwrap_err()
            .contains("only database 0"));
        assert!(Layout::parse("redis+cluster://h1:x").is_err());
        assert!(Layout::parse("redis+cluster://h1:1,,h2:2").is_err());
    }

    #[test]
    fn sentinel_urls_name_the_master() {
        let l = Layout::parse("redis+sentinel://:pw@s1,s2:26380/mymaster/2").unwrap();
        assert_eq!(
            l.shape,
            Shape::Sentinel(
                vec!["s1:26379".into(), "s2:26380".into()],
                "mymaster".into()
            )
        );
        assert_eq!(l.node_url("m:6379"), "redis://:pw@m:6379/2");
        assert_eq!(l.sentinel_url("s1:26379"), "redis://s1:26379/0");
        let l = Layout::parse(
            "redis+sentinel://:pw@s1/m/0?socket_timeout=2&sentinel_password=s%40cret#insecure",
        )
        .unwrap();
        assert_eq!(
            l.node_url("m:1"),
            "redis://:pw@m:1/0?socket_timeout=2#insecure"
        );
        assert_eq!(
            l.sentinel_url("s1:26379"),
            "redis://:s%40cret@s1:26379/0?socket_timeout=2#insecure"
        );
        assert!(!l.shown.contains("cret"), "{}", l.shown);
        let twice =
            Layout::parse("redis+sentinel://s1/m?sentinel_password=a1&sentinel_password=b2");
        let shown = twice.unwrap().shown;
        assert!(!shown.contains("a1") && !shown.contains("b2"), "{shown}");
        let l =
            Layout::parse("redis+sentinel://s1/m?sentinel_username=u&sentinel_password=p").unwrap();
        assert_eq!(l.sentinel_url("s1:26379"), "redis://u:p@s1:26379/0");
        assert!(Layout::parse("redis+sentinel://s1/m?sentinel_username=u").is_err());
        assert!(Layout::parse("redis+cluster://h1?sentinel_password=p")
            .unwrap_err()
            .contains("redis+sentinel://"));
        assert!(Layout::parse("redis+sentinel://s1:26379")
            .unwrap_err()
            .contains("names the master"));
        assert!(Layout::parse("redis+sentinel://s1/m/x").is_err());
    }

    #[test]
    fn single_servers_are_parsed_as_before() {
        assert_eq!(Layout::parse("redis://h:1/0").unwrap().shape, Shape::Single);
        assert!(Layout::parse("http://h")
            .unwrap_err()
            .contains("redis+cluster://"));
    }
}
