//! `credentialName`: a Kubernetes Secret, read where it is mounted.
//!
//! Istio's gateways read a Secret from the API server. meshgate reads the Secrets mounted as
//! volumes under MeshGateway `spec.credentials.directory`: the Secret `name` is the directory
//! `<directory>/name`, one file per key, as the kubelet writes it. The keys are those Istio's
//! secret controller reads:
//! - the certificate and key: `cert` and `key` (an Opaque Secret), else `tls.crt` and
//!   `tls.key` (a `kubernetes.io/tls` Secret);
//! - the CA, from the Secret `name-cacert` when one is mounted, else from `name`: `cacert` with
//!   `crl`, else `ca.crt` with `ca.crl`.
//!
//! A key counts when its file is not empty, as Istio counts a key that has a value. A directory
//! holding nothing but the kubelet's own `..` entries is a Secret that does not exist (an
//! `optional: true` volume of a Secret not yet created). The files are resolved at each load;
//! every file a named Secret could hold is watched, also after a load that failed, so a key
//! that appears later (a CA added to the Secret, a `name-cacert` Secret created) reloads.

use std::path::{Path, PathBuf};

use super::{relative_to, Origin};
use crate::error::ConfigError;
use crate::model::{Backend, UpstreamTls};
use crate::raw::mesh_gateway::MeshGatewaySpec;

/// The Opaque keys, then the `kubernetes.io/tls` keys, of a certificate and its key.
const KEY_PAIRS: [(&str, &str); 2] = [("cert", "key"), ("tls.crt", "tls.key")];
/// The Opaque keys, then the `kubernetes.io/tls` keys, of a CA and its CRL.
const CAS: [(&str, &str); 2] = [("cacert", "crl"), ("ca.crt", "ca.crl")];
/// The Secret that holds the CA of `name`, when mounted: `name-cacert`.
const CA_SUFFIX: &str = "-cacert";

/// Where Secrets are mounted, and the files the names resolved so far could hold.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    directory: Option<PathBuf>,
    watched: Vec<PathBuf>,
}

/// A certificate chain and its key, from a Secret.
#[derive(Debug)]
pub(crate) struct KeyPair {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// CA certificates and their CRL, from a Secret.
#[derive(Debug)]
pub(crate) struct CaFiles {
    pub certificates: PathBuf,
    pub crl: Option<PathBuf>,
}

impl Credentials {
    /// `spec.credentials` of the MeshGateway, when there is one.
    pub fn new(found: &[(Origin, MeshGatewaySpec)], errors: &mut Vec<ConfigError>) -> Self {
        let directory = match found {
            [(o, spec)] => spec.credentials.as_ref().and_then(|c| {
                if c.directory.is_empty() {
                    errors.push(o.error("spec.credentials.directory", "required"));
                    None
                } else {
                    Some(relative_to(&o.file, &c.directory))
                }
            }),
            _ => None,
        };
        Self {
            directory,
            watched: Vec::new(),
        }
    }

    /// The certificate and key of Secret `name`.
    pub fn key_pair(&mut self, name: &str) -> Result<KeyPair, String> {
        let dir = self.secret(name)?;
        self.watch(&dir, KEY_PAIRS.iter().flat_map(|(c, k)| [*c, *k]));
        if !holds_keys(&dir) {
            return Err(not_mounted(name, &dir));
        }
        for (cert, key) in KEY_PAIRS {
            let (certificate, private_key) = (dir.join(cert), dir.join(key));
            if has_value(&certificate) && has_value(&private_key) {
                return Ok(KeyPair {
                    certificate,
                    private_key,
                });
            }
        }
        let empty = KEY_PAIRS
            .iter()
            .find(|(c, k)| dir.join(c).exists() && dir.join(k).exists());
        let (at, keys) = (
            dir.display(),
            "`cert` and `key` nor `tls.crt` and `tls.key`",
        );
        Err(match empty {
            Some((c, k)) => {
                format!("Secret `{name}` ({at}) has the keys `{c}` and `{k}`, but one is empty")
            }
            None => format!("Secret `{name}` ({at}) holds neither {keys}"),
        })
    }

    /// The CA certificates (and CRL) of Secret `name`: those of `name-cacert` when it is
    /// mounted, else its own.
    pub fn ca(&mut self, name: &str) -> Result<CaFiles, String> {
        let own = self.secret(name)?;
        let keys = || CAS.iter().flat_map(|(c, r)| [*c, *r]);
        self.watch(&own, keys());
        // A name too long for `-cacert` is a Secret that cannot exist: the CA is the Secret's.
        let split_name = format!("{name}{CA_SUFFIX}");
        let split = self.secret(&split_name).ok();
        if let Some(split) = &split {
            self.watch(split, keys());
        }
        let (dir, from) = match split {
            Some(split) if holds_keys(&split) => (split, split_name.as_str()),
            _ if holds_keys(&own) => (own, name),
            _ => {
                return Err(format!(
                    "neither the Secret `{split_name}` nor the Secret `{name}` is mounted under \
                     {}",
                    self.directory.as_deref().unwrap_or(Path::new("")).display()
                ))
            }
        };
        for (ca, crl) in CAS {
            let (certificates, crl) = (dir.join(ca), dir.join(crl));
            if has_value(&certificates) {
                return Ok(CaFiles {
                    certificates,
                    crl: has_value(&crl).then_some(crl),
                });
            }
        }
        Err(if CAS.iter().any(|(ca, _)| dir.join(ca).exists()) {
            format!(
                "Secret `{from}` ({}) has the key `cacert` or `ca.crt`, but it is empty",
                dir.display()
            )
        } else {
            format!(
                "Secret `{from}` ({}) holds neither `cacert` nor `ca.crt`",
                dir.display()
            )
        })
    }

    /// Fills the files of each backend's TLS origination that names a Secret
    /// (DestinationRule `credentialName`): SIMPLE reads its CA, MUTUAL its certificate, key and
    /// CA (no CA with `insecureSkipVerify`). Only the rules that reach a backend read theirs.
    pub fn resolve_upstreams(&mut self, backends: &mut [Backend], errors: &mut Vec<ConfigError>) {
        for b in backends {
            let (t, mutual) = match &mut b.policy.tls {
                UpstreamTls::Simple(t) => (t, false),
                UpstreamTls::Mutual(t) => (t, true),
                UpstreamTls::Disable | UpstreamTls::IstioMutual(_) => continue,
            };
            let Some(secret) = t.secret.take() else {
                continue;
            };
            let mut fail = |message: String| {
                let e = ConfigError {
                    file: secret.file.clone(),
                    position: None,
                    resource: Some(secret.resource.clone()),
                    field: Some(secret.field.clone()),
                    message,
                };
                // Every backend of the rule reads the same Secret: one error for it.
                if !errors.contains(&e) {
                    errors.push(e);
                }
            };
            if mutual {
                match self.key_pair(&secret.name) {
                    Ok(pair) => {
                        t.client_certificate = Some(pair.certificate);
                        t.private_key = Some(pair.private_key);
                    }
                    Err(e) => {
                        fail(e);
                        continue;
                    }
                }
            }
            if !t.insecure_skip_verify {
                match self.ca(&secret.name) {
                    Ok(ca) => {
                        t.ca_certificates = Some(ca.certificates);
                        t.ca_crl = ca.crl;
                    }
                    Err(e) => fail(e),
                }
            }
            t.secret = Some(secret);
        }
    }

    /// Every file a Secret named so far could hold: a change to any reloads.
    pub fn into_watched(mut self) -> Vec<PathBuf> {
        self.watched.sort();
        self.watched.dedup();
        self.watched
    }

    /// The directory of Secret `name`.
    fn secret(&self, name: &str) -> Result<PathBuf, String> {
        check_name(name)?;
        match &self.directory {
            Some(dir) => Ok(dir.join(name)),
            None => Err(format!(
                "names the Kubernetes Secret `{name}`: mount it under the directory set as \
                 MeshGateway spec.credentials.directory (the Secret `{name}` is then \
                 <directory>/{name})"
            )),
        }
    }

    fn watch<'a>(&mut self, dir: &Path, keys: impl IntoIterator<Item = &'a str>) {
        self.watched.extend(keys.into_iter().map(|k| dir.join(k)));
    }
}

/// Whether `name` can name a Secret: a Kubernetes object name.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a Secret name (lowercase letters, digits, `-` and `.`, as \
             Kubernetes names Secrets)"
        ))
    }
}

fn not_mounted(name: &str, dir: &Path) -> String {
    format!(
        "Secret `{name}` is not mounted: {} is not a directory holding its keys",
        dir.display()
    )
}

/// A mounted Secret: a directory with an entry other than the kubelet's own (`..data` and
/// the timestamped directory it points to).
fn holds_keys(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| !e.file_name().as_encoded_bytes().starts_with(b".."))
    })
}

/// A file with something in it (a mounted key with a value).
fn has_value(file: &Path) -> bool {
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// A Kubernetes object name (RFC 1123 subdomain): so never a path that leaves the directory.
fn is_secret_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_name_never_leaves_the_directory() {
        for bad in [
            "", "..", ".", "a/b", "../etc", "a..b", "-a", "a-", "A", "a b", "a\0",
        ] {
            assert!(!is_secret_name(bad), "{bad:?}");
        }
        for good in ["httpbin-credential", "a", "a.b-c.d9", "0"] {
            assert!(is_secret_name(good), "{good:?}");
        }
    }
}
