//! A listener's virtual hosts, indexed by host: choosing one costs a few hash lookups (one per
//! label of the authority) whatever the number of VirtualServices.

use std::collections::HashMap;

use serde::Serialize;

use super::{HostMatcher, TlsGroups, VirtualHost};

/// The virtual hosts of one listener and their host index. Built once; never out of step.
///
/// On an HTTPS listener each host of a virtual host is seen by the TLS groups of the servers
/// that serve it (`VirtualHost::host_groups`): a host pattern may then have a virtual host for
/// each, and a lookup sees only those of the connection's group, as if each group had a route
/// configuration of its own (Envoy's, per filter chain).
#[derive(Debug, Default, Serialize)]
pub struct RouteTable {
    virtual_hosts: Vec<VirtualHost>,
    /// Each pattern's virtual hosts, with the TLS groups that see it there.
    #[serde(skip)]
    exact: HashMap<Box<str>, Vec<(usize, TlsGroups)>>,
    /// `*.example.com` kept as `.example.com`.
    #[serde(skip)]
    suffix: HashMap<Box<str>, Vec<(usize, TlsGroups)>>,
    #[serde(skip)]
    any: Vec<(usize, TlsGroups)>,
}

impl RouteTable {
    /// Indexes `virtual_hosts`; for a host pattern that several declare, the first that
    /// answers a connection's TLS group wins. Numbers every route (`Route::index`) in
    /// declaration order.
    pub fn new(mut virtual_hosts: Vec<VirtualHost>) -> Self {
        let mut table = Self::default();
        for (index, route) in virtual_hosts
            .iter_mut()
            .flat_map(|vh| vh.routes.iter_mut())
            .enumerate()
        {
            route.index = index;
        }
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for (k, host) in vh.hosts.iter().enumerate() {
                let entry = (i, vh.groups_of(k));
                match host {
                    HostMatcher::Exact(h) => table.exact.entry(h.clone()).or_default().push(entry),
                    HostMatcher::Suffix(s) => {
                        table.suffix.entry(s.clone()).or_default().push(entry)
                    }
                    HostMatcher::Any => table.any.push(entry),
                }
            }
        }
        table.virtual_hosts = virtual_hosts;
        table
    }

    /// Gives the virtual hosts back, to build a larger table.
    pub fn into_virtual_hosts(self) -> Vec<VirtualHost> {
        self.virtual_hosts
    }

    /// How many routes the virtual hosts hold together: one past the largest `Route::index`.
    pub fn route_count(&self) -> usize {
        self.virtual_hosts.iter().map(|vh| vh.routes.len()).sum()
    }

    /// Every virtual host, in declaration order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host for `host` (no port, any case), as Envoy picks it: an exact host, else
    /// the longest matching `*.suffix`, else `*`.
    pub fn find(&self, host: &str) -> Option<&VirtualHost> {
        self.find_for(host, None)
    }

    /// As `find`, among the virtual hosts that answer TLS group `group` (`None`: all).
    pub fn find_for(&self, host: &str, group: Option<usize>) -> Option<&VirtualHost> {
        let mut buf = [0u8; 256];
        let owned;
        let lower: &str = match buf.get_mut(..host.len()) {
            Some(bytes) => {
                bytes.copy_from_slice(host.as_bytes());
                bytes.make_ascii_lowercase();
                // ASCII lowercasing keeps UTF-8 valid; a host that is not UTF-8 cannot get here.
                std::str::from_utf8(bytes).ok()?
            }
            None => {
                owned = host.to_ascii_lowercase();
                &owned
            }
        };
        let answering = |candidates: &[(usize, TlsGroups)]| {
            candidates
                .iter()
                .find(|(_, groups)| groups.admits(group))
                .map(|(i, _)| *i)
        };
        let i = self
            .exact
            .get(lower)
            .and_then(|c| answering(c))
            .or_else(|| {
                // Longest suffix first: `.b.example.com` before `.example.com`. A suffix needs
                // at least one character before its dot.
                lower
                    .char_indices()
                    .filter(|&(i, c)| c == '.' && i > 0)
                    .find_map(|(i, _)| self.suffix.get(&lower[i..]).and_then(|c| answering(c)))
            })
            .or_else(|| answering(&self.any));
        i.and_then(|i| self.virtual_hosts.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(source: &str, hosts: &[&str]) -> VirtualHost {
        VirtualHost {
            source: source.into(),
            hosts: hosts
                .iter()
                .map(|h| HostMatcher::parse(h).unwrap())
                .collect(),
            host_groups: None,
            routes: Vec::new(),
        }
    }

    #[test]
    fn envoy_precedence() {
        let table = RouteTable::new(vec![
            vh("any", &["*"]),
            vh("short-suffix", &["*.example.com"]),
            vh("long-suffix", &["*.api.example.com"]),
            vh("exact", &["www.api.example.com", "Other.Example.org"]),
            vh("duplicate-exact", &["www.api.example.com"]),
        ]);
        let cases = [
            ("www.api.example.com", "exact"),
            ("WWW.API.Example.COM", "exact"),
            ("other.example.org", "exact"),
            ("v2.api.example.com", "long-suffix"),
            ("a.b.api.example.com", "long-suffix"),
            ("api.example.com", "short-suffix"),
            ("x.example.com", "short-suffix"),
            ("example.com", "any"),
            (".example.com", "any"),
            ("elsewhere.net", "any"),
        ];
        for (host, want) in cases {
            assert_eq!(
                table.find(host).map(|v| v.source.as_str()),
                Some(want),
                "{host}"
            );
        }
        let long = format!("{}.example.com", "a".repeat(300));
        assert_eq!(
            table.find(&long).map(|v| v.source.as_str()),
            Some("short-suffix")
        );
    }

    #[test]
    fn no_fallback_without_star() {
        let table = RouteTable::new(vec![vh("only", &["*.example.com"])]);
        assert!(table.find("example.com").is_none());
        assert!(table.find("example.org").is_none());
    }
}
