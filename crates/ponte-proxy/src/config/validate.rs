//! Cross-field checks of a parsed configuration, reported at the
//! offending key's line, and the start-time check that no upstream is the
//! relay itself.

use super::*;

impl Config {
    /// Cross-field checks. `text` (the source) locates spans.
    pub fn validate(&self, text: Option<&str>, file: Option<&Path>) -> Result<(), ConfigError> {
        let err = |span: std::ops::Range<usize>, key: String, message: String| {
            let (line, column) = match text {
                Some(t) if span.end > 0 => line_col(t, span.start),
                _ => (0, 0),
            };
            ConfigError {
                file: file.map(Path::to_path_buf),
                line,
                column,
                key,
                message,
            }
        };
        if self.listener.is_empty() {
            return Err(err(
                0..0,
                "listener".into(),
                "no [[listener]] configured".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(err(
                0..0,
                "limits.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        let t = &self.tuning;
        if !(512..=1 << 20).contains(&t.buffer_size) {
            return Err(err(
                0..0,
                "tuning.buffer_size".into(),
                "must be between 512 and 1048576 bytes".into(),
            ));
        }
        if t.max_buffer_size < t.buffer_size || t.max_buffer_size > 1 << 20 {
            return Err(err(
                0..0,
                "tuning.max_buffer_size".into(),
                "must be between buffer_size and 1048576 bytes".into(),
            ));
        }
        for (field, d) in [
            ("connect", self.timeouts.connect),
            ("idle", self.timeouts.idle),
            ("half_close", self.timeouts.half_close),
            ("handshake", self.timeouts.handshake),
        ] {
            if d.0.is_zero() {
                return Err(err(
                    0..0,
                    format!("timeouts.{field}"),
                    "must be longer than 0".into(),
                ));
            }
        }
        for (name, u) in &self.upstream {
            if u.servers.get_ref().is_empty() {
                return Err(err(
                    u.servers.span(),
                    format!("upstream.{name}.servers"),
                    "at least one server is needed".into(),
                ));
            }
        }
        if let Some(a) = &self.acme {
            let problem = if !a.directory.starts_with("https://") {
                Some(("acme.directory", "must be the CA's https:// directory URL"))
            } else if a.domains.is_empty() {
                Some(("acme.domains", "at least one DNS name is needed"))
            } else if a
                .domains
                .iter()
                .any(|d| !valid_hostname(d) || d.parse::<IpAddr>().is_ok())
            {
                Some(("acme.domains", "each must be a DNS name (no IP addresses)"))
            } else if a.check_interval.0 < Duration::from_secs(1) {
                Some(("acme.check_interval", "must be at least 1s"))
            } else {
                None
            };
            if let Some((key, message)) = problem {
                return Err(err(0..0, key.into(), message.into()));
            }
        }
        let mut names = HashSet::new();
        // Each address bound so far, and the key that binds it.
        let mut addrs: Vec<(SocketAddr, String)> = Vec::new();
        if let Some(a) = &self.admin {
            addrs.push((a.listen.get_ref().0, "[admin] listen (--admin)".into()));
        }
        for (i, l) in self.listener.iter().enumerate() {
            let name = l.name.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    l.name.span(),
                    format!("listener[{i}].name"),
                    format!("`{name}`: use letters, digits, - and _"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(err(
                    l.name.span(),
                    format!("listener[{i}].name"),
                    format!("listener name `{name}` is used twice"),
                ));
            }
            if l.listen.get_ref().is_empty() {
                return Err(err(
                    l.listen.span(),
                    format!("listener[{i}].listen"),
                    "at least one address is needed".into(),
                ));
            }
            for a in l.listen.get_ref() {
                if a.0.port() == 0 {
                    continue;
                }
                if let Some((other, who)) = addrs.iter().find(|(b, _)| overlap(*b, a.0)) {
                    let message = if *other == a.0 {
                        format!("address {a} is used twice: also by {who}")
                    } else {
                        format!("address {a} overlaps {other} of {who}: one port, and one of them is every address")
                    };
                    return Err(err(
                        l.listen.span(),
                        format!("listener[{i}].listen"),
                        message,
                    ));
                }
                addrs.push((a.0, format!("listener[{i}].listen (`{name}`)")));
            }
            if !self.upstream.contains_key(l.upstream.get_ref()) {
                let known: Vec<&str> = self.upstream.keys().map(String::as_str).collect();
                return Err(err(
                    l.upstream.span(),
                    format!("listener[{i}].upstream"),
                    format!(
                        "no upstream named `{}` (defined: {})",
                        l.upstream.get_ref(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            if let Some(p) = &l.sni_passthrough {
                let problem = if l.tls == TlsMode::None {
                    Some("sni_passthrough needs a TLS listener (the server name is read from its ClientHello)".to_owned())
                } else if l.stealth.is_some() {
                    Some("a stealth listener takes no sni_passthrough".to_owned())
                } else if p.names.is_empty()
                    || p.names
                        .iter()
                        .any(|n| !valid_hostname(n) || n.parse::<IpAddr>().is_ok())
                {
                    Some("sni_passthrough.names must be DNS names".to_owned())
                } else if !self.upstream.contains_key(p.upstream.get_ref()) {
                    Some(format!(
                        "sni_passthrough: no upstream named `{}`",
                        p.upstream.get_ref()
                    ))
                } else {
                    None
                };
                if let Some(message) = problem {
                    return Err(err(
                        p.upstream.span(),
                        format!("listener[{i}].sni_passthrough"),
                        message,
                    ));
                }
            }
            if l.tls == TlsMode::Acme && self.acme.is_none() {
                return Err(err(
                    l.name.span(),
                    format!("listener[{i}].tls"),
                    "tls = \"acme\" needs an [acme] section (directory, domains)".into(),
                ));
            }
            if let Some(st) = &l.stealth {
                let problem = if l.tls != TlsMode::None {
                    Some("a stealth listener takes no tls: the cover site's TLS is what probes see")
                } else if !valid_hostname(&st.domain) || st.domain.parse::<IpAddr>().is_ok() {
                    Some("stealth.domain must be the DNS name the cover site answers to")
                } else if st.site.is_some() && st.cover != crate::stealth::CoverSite::Builtin {
                    Some("stealth.site is the builtin cover's folder: set cover = \"builtin\"")
                } else {
                    None
                };
                if let Some(message) = problem {
                    return Err(err(
                        l.name.span(),
                        format!("listener[{i}].stealth"),
                        message.into(),
                    ));
                }
            }
            if l.max_connections == Some(0) {
                return Err(err(
                    0..0,
                    format!("listener[{i}].max_connections"),
                    "must be at least 1".into(),
                ));
            }
        }
        Ok(())
    }

    /// Refuse an upstream server that is one of this relay's own listeners
    /// (`127.0.0.1:443` with a listener on `0.0.0.0:443`): started, the
    /// relay would forward every connection to itself until the connection
    /// cap is full. Part of what a start checks, not of [`Config::validate`]:
    /// printing a config or its share link forwards nothing.
    pub fn check_forwarding(&self) -> Result<(), ConfigError> {
        for (name, u) in &self.upstream {
            for (j, server) in u.servers.get_ref().iter().enumerate() {
                let Some(ip) = server.ip() else { continue };
                let to = SocketAddr::new(ip, server.port);
                for (i, l) in self.listener.iter().enumerate() {
                    let own = l.listen.get_ref().iter().find(|a| {
                        a.0.port() != 0
                            && overlap(a.0, to)
                            && (ip.is_loopback() || ip.is_unspecified() || ip == a.0.ip())
                    });
                    if let Some(a) = own {
                        return Err(ConfigError {
                            file: None,
                            line: 0,
                            column: 0,
                            key: format!("upstream.{name}.servers[{j}]"),
                            message: format!(
                                "{server} is this relay's own listener[{i}] (`{}`, {a}): it would forward to itself",
                                l.name.get_ref()
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// True when binding both addresses would clash: the same port and family,
/// and the same IP or one of them the wildcard (IPv6 sockets are bound
/// IPv6-only, so `[::]` and `0.0.0.0` do not clash).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
