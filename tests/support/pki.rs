//! A shared root with per-mesh intermediates, made by the code behind `meshgate pki`.

use std::collections::BTreeMap;

use meshgate_config::spiffe::TrustDomain;
use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec, Workload};

pub struct Pki {
    pub root: Authority,
    meshes: BTreeMap<String, Authority>,
}

impl Pki {
    /// A root and an intermediate for each trust domain.
    pub fn new(trust_domains: &[&str]) -> Self {
        Self::named("test shared root", trust_domains)
    }

    /// As `new`, with a root of that common name (meshes with roots of their own).
    pub fn named(root: &str, trust_domains: &[&str]) -> Self {
        let root = Authority::root(root, KeyAlgorithm::EcdsaP256).unwrap();
        let meshes = trust_domains
            .iter()
            .map(|td| {
                let ca = root
                    .intermediate(&TrustDomain::new(td).unwrap(), KeyAlgorithm::EcdsaP256)
                    .unwrap();
                (td.to_string(), ca)
            })
            .collect();
        Self { root, meshes }
    }

    /// The intermediate of a mesh.
    pub fn ca(&self, trust_domain: &str) -> &Authority {
        &self.meshes[trust_domain]
    }

    /// An Istio workload leaf issued by `trust_domain`'s CA for `spiffe_id`.
    pub fn workload(&self, trust_domain: &str, spiffe_id: &str) -> Workload {
        self.ca(trust_domain)
            .issue(&LeafSpec::spiffe(spiffe_id))
            .unwrap()
    }

    /// A leaf from `trust_domain`'s CA with a custom spec.
    pub fn leaf(&self, trust_domain: &str, spec: &LeafSpec) -> Workload {
        self.ca(trust_domain).issue(spec).unwrap()
    }

    /// A MeshGateway's `spec.trust` with issuer binding (two-space indent, as `spec` fields):
    /// each mesh's CA, by its certificate written to `dir`, bound to its own trust domain.
    pub fn issuer_binding(&self, dir: &std::path::Path) -> String {
        let mut trust = String::from("  trust:\n    issuers:\n");
        for (td, ca) in &self.meshes {
            let file = dir.join(format!("{td}-ca.pem"));
            std::fs::write(&file, &ca.cert_pem).unwrap();
            trust.push_str(&format!(
                "    - {{certificate: {}, trustDomains: [{td}]}}\n",
                file.display()
            ));
        }
        trust
    }
}
