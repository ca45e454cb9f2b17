//! Origin: `PeerIdentity` + trust settings -> `Origin::{Local, Remote}`.
//!
//! Local when the peer's trust domain is ours, one of our aliases, or `cluster.local` (Istio's
//! default, compatible with a custom trust domain while workloads still hold old certificates;
//! `spec.trust.clusterLocalIsLocal: false` turns that off). Everything else is remote.

use meshgate_config::model::TrustSettings;

use crate::identity::PeerIdentity;

/// Which mesh a caller belongs to, relative to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Remote,
}

impl Origin {
    /// The tag and metric value: `local` or `remote`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Remote => "remote",
        }
    }
}

/// Classifies a verified peer.
pub fn origin(peer: &PeerIdentity, trust: &TrustSettings) -> Origin {
    if trust.is_local(peer.spiffe_id.trust_domain()) {
        Origin::Local
    } else {
        Origin::Remote
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_config::spiffe::{SpiffeId, TrustDomain};

    fn peer(id: &str) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            leaf_sha256: String::new(),
            subject: String::new(),
            dns: Vec::new(),
        }
    }

    #[test]
    fn origin_table() {
        let td = |s| TrustDomain::new(s).unwrap();
        let trust = TrustSettings {
            trust_domain: td("example-target.com"),
            aliases: vec![td("old-target.com")],
            cluster_local_is_local: true,
            allowed_trust_domains: None,
            issuers: Vec::new(),
            bundles: Vec::new(),
            ecdh_curves: None,
        };
        let strict = TrustSettings {
            cluster_local_is_local: false,
            ..trust.clone()
        };
        let cases = [
            (
                "spiffe://example-target.com/ns/a/sa/b",
                &trust,
                Origin::Local,
            ),
            ("spiffe://old-target.com/ns/a/sa/b", &trust, Origin::Local),
            ("spiffe://cluster.local/ns/a/sa/b", &trust, Origin::Local),
            ("spiffe://cluster.local/ns/a/sa/b", &strict, Origin::Remote),
            ("spiffe://example.com/ns/a/sa/b", &trust, Origin::Remote),
            (
                "spiffe://example-target.com.evil/ns/a/sa/b",
                &trust,
                Origin::Remote,
            ),
            ("spiffe://target.com/ns/a/sa/b", &trust, Origin::Remote),
        ];
        for (id, trust, want) in cases {
            assert_eq!(origin(&peer(id), trust), want, "{id}");
        }
    }
}
