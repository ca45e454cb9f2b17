//! The runtime model: immutable, shared behind an `Arc`, `Serialize` for `/config_dump`.
//!
//! A `Model` that exists is valid: every string that matters was parsed into its type when the
//! configuration was compiled, and matching data (host suffixes, regexes) is precomputed.

pub mod authz;
pub mod header_format;
mod host;
mod outlier;
pub mod path;
mod retry;
mod route;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::HeaderName;
use serde::Serialize;

pub use host::{HostMatcher, NamespaceFilter};
pub use outlier::OutlierDetection;
pub use retry::{Retry, RetryOn};
pub use route::{
    AbortStatus, Cors, DestinationHeaders, DirectResponse, Fault, FaultAbort, FaultDelay,
    HeaderCommands, HeaderMatch, HeaderOps, MatchInput, Mirror, QueryParamMatch, Redirect,
    RedirectPort, RequestMatch, Route, RouteAction, StringMatcher, TlsGroups, UriRewrite,
    VirtualHost, WeightedBackend,
};
pub use table::RouteTable;

use crate::spiffe::TrustDomain;
use crate::warning::Warning;

/// Everything one meshgate process runs with.
#[derive(Debug, Serialize)]
pub struct Model {
    /// This proxy: identity files, addresses, tagging (from the MeshGateway).
    pub proxy: ProxySettings,
    /// Trust domains and what counts as local.
    pub trust: TrustSettings,
    /// One per Gateway port bound on this proxy.
    pub listeners: Vec<Listener>,
    /// Upstream services, indexed by [`WeightedBackend::backend`].
    pub backends: Vec<Backend>,
    /// The AuthorizationPolicies that apply to this proxy.
    pub policies: authz::Policies,
    /// Every file that was read, for reload watching.
    pub files: Vec<PathBuf>,
    /// Every file the Secrets that `credentialName`s name could hold, whether it exists or
    /// not: watched for reloads, so that a key added to a Secret is seen.
    pub secret_files: Vec<PathBuf>,
    /// Problems that do not stop the proxy, for `meshgate check`, `run` and reloads.
    pub warnings: Vec<Warning>,
}

/// This proxy, as its `MeshGateway` resource describes it.
#[derive(Debug, Serialize)]
pub struct ProxySettings {
    /// `namespace/name` of the MeshGateway.
    pub name: String,
    /// Matched by Gateway selectors.
    pub labels: BTreeMap<String, String>,
    /// The workload certificate, key and bundle: files, or the SPIFFE Workload API.
    pub identity: Option<Identity>,
    /// The admin listener.
    pub admin: Option<AdminSettings>,
    /// The plaintext egress listener.
    pub outbound: Option<SocketAddr>,
    /// Header names the proxy owns.
    pub tagging: Tagging,
    /// Whether TLS 1.3 session tickets are issued (Envoy's stateful/stateless session
    /// resumption); default true.
    pub session_resumption: bool,
    /// Where the access log goes (`/dev/stdout` works); `None`: off.
    pub access_log: Option<PathBuf>,
    /// One JSON object or one line of Envoy's default text format per entry.
    pub access_log_encoding: AccessLogEncoding,
    /// What the outbound listener does with a host no route or ServiceEntry names.
    pub outbound_policy: OutboundPolicy,
    /// `meshConfig.enableTracing`: an `x-request-id` is set on requests without one, so that
    /// backends can join their spans and logs; no spans are sent.
    pub tracing: bool,
    /// Proxies in front of this gateway whose `x-forwarded-for` entries are trusted (Istio's
    /// `numTrustedProxies`, Envoy's `xff_num_trusted_hops`).
    pub num_trusted_proxies: u32,
    /// PROXY protocol (v1 or v2) on the Gateway listeners, from these peers (`None`: off).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Istio's root namespace (`meshConfig.rootNamespace`, or `MeshGateway.spec.rootNamespace`;
    /// default `istio-system`): AuthorizationPolicies there apply mesh-wide.
    pub root_namespace: String,
    /// How often config and certificate files are checked for changes; `None`: never.
    pub reload_poll: Option<std::time::Duration>,
    /// Downstream limits.
    pub limits: Limits,
    /// How request heads are made canonical before anything reads them.
    pub http: HttpSettings,
}

/// How the access log writes an entry (`meshConfig.accessLogEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// Envoy's default format, as Istio configures it (Istio's default encoding).
    Text,
    /// One JSON object per line (meshgate's default for `MeshGateway.spec.accessLog`).
    #[default]
    Json,
}

/// `meshConfig.outboundTrafficPolicy.mode`, for the outbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundPolicy {
    /// Only VirtualService and ServiceEntry hosts are routed; any other host gets 404
    /// (meshgate's default: the outbound listener sends as this proxy).
    #[default]
    RegistryOnly,
    /// A host nothing names is forwarded, plaintext, to the host and port of the request's
    /// authority, resolved by DNS (Istio's `PassthroughCluster`).
    AllowAny,
}

/// How request heads are made canonical (`meshConfig.pathNormalization` and
/// `MeshGateway.spec.http`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HttpSettings {
    pub path_normalization: path::PathNormalization,
    pub headers_with_underscores: UnderscoreHeaders,
}

/// Envoy's `headers_with_underscores_action`, for request headers whose name holds `_`. An
/// underscore spelling of a header the proxy owns (`x_mesh_origin`) is dropped whatever this
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnderscoreHeaders {
    /// Forward them (Envoy's and Istio's default).
    Allow,
    /// Remove them before routing (meshgate's default, as nginx's).
    #[default]
    DropHeader,
    /// Answer 400.
    RejectRequest,
}

/// What one downstream client may take (`MeshGateway.spec.limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// From accept to a completed TLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// For each HTTP/1.1 request head.
    pub request_header_timeout: std::time::Duration,
    /// The largest request head accepted (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_request_header_bytes: u32,
    /// Connections over this many on one listener are closed at once.
    pub max_connections_per_listener: Option<u32>,
    /// Streams one HTTP/2 client may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// A connection with no request in flight for this long is closed (Envoy's
    /// `idle_timeout`, 1 h by default); `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// A request (HTTP/1.1) or stream (HTTP/2) with no progress either way (request bytes
    /// read, response bytes written) for this long is answered 408 before its response head,
    /// and cut after it (Envoy's `stream_idle_timeout`, 5 min by default); `None`: never.
    pub stream_idle_timeout: Option<std::time::Duration>,
    /// A request body not received whole this long after its head, and before the response
    /// began, is answered 408 (Envoy's `request_timeout`); `None` (the default, as Envoy's,
    /// which streaming requests need): never.
    pub request_timeout: Option<std::time::Duration>,
    /// Response bytes one stream may have waiting for a client that does not read: an
    /// HTTP/1.1 response body is paused at this many unwritten bytes, an HTTP/2 stream's send
    /// buffer holds at most this many.
    pub stream_write_buffer_bytes: u32,
    /// The most certificates a client may send (its leaf included), refused before any
    /// signature is checked.
    pub max_certificate_chain_length: u32,
    /// How many trust domains the configuration does not name get request metrics of their
    /// own (`source_trust_domain`); more count as `other`.
    pub trust_domain_labels: u32,
}

impl Limits {
    /// The range of every timeout (`idleTimeout` may also be 0s, never): long enough for a
    /// handshake over a slow link, short enough that no deadline overflows.
    pub const TIMEOUTS: (std::time::Duration, std::time::Duration) = (
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(24 * 3600),
    );
    /// `maxRequestHeaderBytes`: hyper's smallest read buffer, up to 1 MiB.
    pub const REQUEST_HEADER_BYTES: (u32, u32) = (8192, 1 << 20);
    /// `streamWriteBufferBytes`: one TLS record, up to 16 MiB.
    pub const STREAM_WRITE_BUFFER_BYTES: (u32, u32) = (16 * 1024, 16 << 20);
    /// `maxConnectionsPerListener` (0: no limit).
    pub const CONNECTIONS_PER_LISTENER: (u32, u32) = (1, 1_000_000);
    /// `http2MaxConcurrentStreams`: HTTP/2's own bound.
    pub const HTTP2_STREAMS: (u32, u32) = (1, (1 << 31) - 1);
    /// `maxCertificateChainLength`: a leaf alone, up to a long plugged-in CA chain.
    pub const CERTIFICATE_CHAIN: (u32, u32) = (1, 32);
    /// `trustDomainLabels` (0: only those the configuration names).
    pub const TRUST_DOMAIN_LABELS: (u32, u32) = (0, 10_000);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: std::time::Duration::from_secs(10),
            request_header_timeout: std::time::Duration::from_secs(30),
            max_request_header_bytes: 64 * 1024,
            max_connections_per_listener: Some(10_000),
            http2_max_concurrent_streams: 1024,
            idle_timeout: Some(std::time::Duration::from_secs(3600)),
            stream_idle_timeout: Some(std::time::Duration::from_secs(300)),
            request_timeout: None,
            stream_write_buffer_bytes: 64 * 1024,
            max_certificate_chain_length: 8,
            trust_domain_labels: 100,
        }
    }
}

/// Where the workload certificate chain, its key and the trust bundle come from, and the CRLs
/// checked on peers' chains.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub source: IdentitySource,
    /// Certificate revocation lists (PEM or DER; one file may hold several), checked for the
    /// chains of `ISTIO_MUTUAL` clients and of upstreams meshgate originates mTLS to.
    pub crl: Option<PathBuf>,
    /// `expiredCrl: DENY`: a chain that a CRL past its `nextUpdate` covers is refused; by
    /// default (`USE`) such a CRL still revokes what it lists.
    pub deny_expired_crl: bool,
}

/// The source of the identity.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// Istio's file-mounted layout, absolute paths.
    Files {
        cert_chain: PathBuf,
        private_key: PathBuf,
        root_certs: PathBuf,
    },
    /// X509-SVIDs and bundles streamed by the SPIFFE Workload API.
    WorkloadApi(WorkloadApi),
}

/// `spec.identity.workloadApi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadApi {
    /// `unix:///path` or `tcp://ip:port`; `None`: `SPIFFE_ENDPOINT_SOCKET`, read at start.
    pub socket: Option<String>,
    /// The SVID used when the API serves several; `None`: the first (the default SVID).
    pub spiffe_id: Option<String>,
    /// How long a (re)load waits for the first SVID before it fails.
    pub start_timeout: std::time::Duration,
}

/// The request headers the proxy owns: every client-sent copy is removed before they are set.
#[derive(Debug, Clone, Serialize)]
pub struct Tagging {
    #[serde(serialize_with = "route::serialize_display")]
    pub origin: HeaderName,
    #[serde(serialize_with = "route::serialize_display")]
    pub trust_domain: HeaderName,
    #[serde(serialize_with = "route::serialize_display")]
    pub principal: HeaderName,
    /// What happens to `x-forwarded-client-cert`, as Envoy's `forward_client_cert_details`.
    pub forward_client_cert: ForwardClientCert,
    /// XFCC also carries the client's leaf (`Cert`) and its whole chain (`Chain`), URL-encoded
    /// PEM, as Envoy's `set_current_client_cert_details.{cert, chain}`.
    pub client_cert: bool,
    pub client_chain: bool,
    /// The PROXY v2 TLV type (`0xE0`-`0xEF`, the custom range) that carries the client's SPIFFE
    /// ID, as UTF-8, on connections a TCP listener terminated and forwards with a PROXY v2
    /// header; `None`: not sent.
    pub proxy_protocol_tlv: Option<u8>,
}

impl Tagging {
    /// Every request header the proxy owns: the three tags, `x-forwarded-client-cert`,
    /// `x-forwarded-for` (appended to), `x-forwarded-proto` and `x-envoy-external-address`.
    /// No client input removes or duplicates them, and no route's header operations may name
    /// them.
    pub fn owned(&self) -> [HeaderName; 7] {
        [
            self.origin.clone(),
            self.trust_domain.clone(),
            self.principal.clone(),
            X_FORWARDED_CLIENT_CERT,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_ENVOY_EXTERNAL_ADDRESS,
        ]
    }
}

/// Envoy's client-certificate header.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// The client address chain.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The trusted client address, as Envoy sets it at an edge (never a client's copy).
pub const X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
/// `https` on TLS listeners, `http` on plaintext ones.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Envoy's `forward_client_cert_details` modes that meshgate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCert {
    /// Remove the client's XFCC and set our own (Envoy's `SANITIZE_SET`, the default).
    SanitizeSet,
    /// Remove the client's XFCC and set nothing.
    Sanitize,
}

/// The local trust domain, its aliases and the handshake allow-list.
#[derive(Debug, Clone, Serialize)]
pub struct TrustSettings {
    /// The mesh's trust domain (`cluster.local` unless configured).
    pub trust_domain: TrustDomain,
    /// `trustDomainAliases`: also local.
    pub aliases: Vec<TrustDomain>,
    /// Whether `cluster.local` peers count as local (Istio's migration rule; default true).
    pub cluster_local_is_local: bool,
    /// Trust domains accepted at the handshake; `None` accepts any that chains to the bundle.
    pub allowed_trust_domains: Option<Vec<TrustDomain>>,
    /// Issuer binding: when not empty, a leaf's issuing CA must be listed here and may only
    /// issue the trust domains listed with it.
    pub issuers: Vec<IssuerBinding>,
    /// Roots per trust domain: a peer whose SPIFFE ID is in one of these trust domains is
    /// verified against that trust domain's roots only (several entries for one trust domain
    /// are merged); any other peer against the identity's `rootCerts`.
    pub bundles: Vec<TrustBundle>,
    /// `meshConfig.tlsDefaults.ecdhCurves`, in preference order; `None` keeps the default
    /// (X25519MLKEM768, X25519, P-256, P-384).
    pub ecdh_curves: Option<Vec<EcdhCurve>>,
}

/// `MeshGateway.spec.admin`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    /// Every admin endpoint; `/config_dump` and `/certs` only when this is a loopback address
    /// or `debug_endpoints` is set.
    pub address: SocketAddr,
    /// A second listener serving only `/ready`, `/healthz` and `/stats/prometheus`: what a
    /// kubelet and Prometheus need from the pod network.
    pub probes: Option<SocketAddr>,
    /// `/config_dump` and `/certs` on a non-loopback `address` too.
    pub debug_endpoints: bool,
}

/// Roots for one trust domain: `MeshGateway.spec.trust.bundles[]`, or a
/// `meshConfig.caCertificates[]` entry with `trustDomains` (one per trust domain).
#[derive(Debug, Clone, Serialize)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pub source: BundleSource,
}

/// Where a trust domain's roots come from.
#[derive(Debug, Clone, Serialize)]
pub enum BundleSource {
    /// A file of PEM certificates, or a SPIFFE bundle document (JSON, `x509-svid` keys).
    File(PathBuf),
    /// PEM certificates given inline (`meshConfig.caCertificates[].pem`).
    #[serde(serialize_with = "serialize_pem")]
    Pem(String),
    /// A SPIFFE bundle endpoint, fetched and refreshed while the proxy runs.
    Endpoint(BundleEndpoint),
}

/// A SPIFFE bundle endpoint (SPIFFE Trust Domain and Bundle, Federation): an HTTPS URL that
/// serves the trust domain's bundle document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleEndpoint {
    /// `https://host[:port]/path`.
    pub url: String,
    pub profile: EndpointProfile,
    /// The default refresh, when the bundle has no `spiffe_refresh_hint`.
    pub refresh: std::time::Duration,
}

/// How the endpoint's server is authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EndpointProfile {
    /// `https_web`: Web PKI, the server's certificate valid for the URL's host, chained to
    /// `ca_certificates` or else the system's roots.
    HttpsWeb { ca_certificates: Option<PathBuf> },
    /// `https_spiffe`: the server presents this SPIFFE ID, verified against the bundle of its
    /// trust domain as configured (a bundle file given beside the endpoint, to start from).
    HttpsSpiffe { spiffe_id: String },
}

/// One entry of `MeshGateway.spec.trust.issuers`.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerBinding {
    pub issuer: IssuerKey,
    pub trust_domains: Vec<TrustDomain>,
}

/// How an issuing CA is named: its certificate file, or the SHA-256 of its
/// SubjectPublicKeyInfo (lowercase hex, as `meshgate pki inspect` prints it).
#[derive(Debug, Clone, Serialize)]
pub enum IssuerKey {
    Certificate(PathBuf),
    SpkiSha256(String),
    /// A PEM certificate given inline (`meshConfig.caCertificates[].pem`).
    #[serde(serialize_with = "serialize_pem")]
    Pem(String),
}

/// Certificates are public, but a dump need not repeat them: their first line says what they are.
fn serialize_pem<S: serde::Serializer>(pem: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("<{} bytes of PEM>", pem.len()))
}

/// A TLS key-exchange group, by the names Istio and Envoy use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EcdhCurve {
    #[serde(rename = "X25519")]
    X25519,
    #[serde(rename = "P-256")]
    P256,
    #[serde(rename = "P-384")]
    P384,
    #[serde(rename = "X25519MLKEM768")]
    X25519Mlkem768,
}

impl EcdhCurve {
    /// Parses Envoy's name for the group.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "X25519" => Some(Self::X25519),
            "P-256" => Some(Self::P256),
            "P-384" => Some(Self::P384),
            "X25519MLKEM768" => Some(Self::X25519Mlkem768),
            _ => None,
        }
    }
}

impl Model {
    /// Every certificate and key file the configuration names, which a change must reload.
    pub fn certificate_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(id) = &self.proxy.identity {
            if let IdentitySource::Files {
                cert_chain,
                private_key,
                root_certs,
            } = &id.source
            {
                files.extend([cert_chain.clone(), private_key.clone(), root_certs.clone()]);
            }
            files.extend(id.crl.clone());
        }
        for l in &self.listeners {
            for t in &l.tls {
                if let Some(c) = t.mode.files() {
                    files.extend([c.certificate.clone(), c.private_key.clone()]);
                    if let Some((certificate, key)) = &c.second {
                        files.extend([certificate.clone(), key.clone()]);
                    }
                    files.extend(c.ca_certificates.iter().chain(&c.ca_crl).cloned());
                }
            }
        }
        for issuer in &self.trust.issuers {
            if let IssuerKey::Certificate(path) = &issuer.issuer {
                files.push(path.clone());
            }
        }
        for bundle in &self.trust.bundles {
            match &bundle.source {
                BundleSource::File(path) => files.push(path.clone()),
                BundleSource::Endpoint(BundleEndpoint {
                    profile:
                        EndpointProfile::HttpsWeb {
                            ca_certificates: Some(path),
                        },
                    ..
                }) => files.push(path.clone()),
                _ => {}
            }
        }
        for b in &self.backends {
            if let UpstreamTls::Simple(t) | UpstreamTls::Mutual(t) = &b.policy.tls {
                files.extend(
                    [
                        &t.ca_certificates,
                        &t.ca_crl,
                        &t.client_certificate,
                        &t.private_key,
                    ]
                    .into_iter()
                    .flatten()
                    .cloned(),
                );
            }
        }
        files.sort();
        files.dedup();
        files
    }
}

impl TrustSettings {
    /// Whether a peer of trust domain `td` belongs to this mesh.
    pub fn is_local(&self, td: &str) -> bool {
        td == self.trust_domain.as_str()
            || self.aliases.iter().any(|a| a.as_str() == td)
            || (self.cluster_local_is_local && td == "cluster.local")
    }

    /// Whether the handshake allow-list admits `td`.
    pub fn admits(&self, td: &str) -> bool {
        match &self.allowed_trust_domains {
            None => true,
            Some(list) => list.iter().any(|a| a.as_str() == td),
        }
    }
}

/// One bound port: the Gateway servers on it and the routes of the VirtualServices bound to
/// those servers.
#[derive(Debug, Serialize)]
pub struct Listener {
    /// A stable name for logs and metrics: the first server's port name, or `port-<n>`.
    pub name: String,
    pub kind: ListenerKind,
    /// The Gateway port number, which route `port` matches compare with.
    pub port: u16,
    /// Where it binds (after `portOverrides`).
    pub address: SocketAddr,
    /// Plaintext HTTP or TLS-terminated HTTPS.
    pub protocol: ListenerProtocol,
    /// The TLS settings of the TLS servers on this port, one per server (its TLS group); the
    /// SNI of a connection chooses one (`ServerHost::tls`). Empty on plaintext listeners.
    pub tls: Vec<ServerTls>,
    /// Hosts the servers on this port accept.
    pub servers: Vec<ServerHost>,
    /// Routes, from VirtualServices bound to the servers' Gateways.
    pub routes: RouteTable,
    /// On an `AUTO_PASSTHROUGH` listener, the backend (index into `Model::backends`) of each
    /// SNI it forwards, in Istio's form `outbound_.<port>_.<subset>_.<host>` (`_` for no
    /// subset), lowercase: every declared service port, and subset, that the servers' hosts
    /// expose.
    pub passthrough: BTreeMap<String, usize>,
    /// On a `PASSTHROUGH` listener, the `tls` routes bound to it, in order: the first whose
    /// match matches the connection takes it.
    pub sni_routes: Vec<SniRoute>,
    /// On a `TCP` listener (plaintext, or TLS it terminates), the `tcp` routes bound to it, in
    /// order: the first whose match matches the connection takes it.
    pub tcp_routes: Vec<TcpRoute>,
}

impl Listener {
    /// The `tls` route of a PASSTHROUGH listener for a connection with `sni` at `local`: the
    /// one whose SNI host matches most specifically (exact, the longest `*.suffix`, `*`), as
    /// Envoy picks a filter chain by server name; the first of equals.
    pub fn sni_route(&self, sni: &str, local: std::net::IpAddr) -> Option<&SniRoute> {
        self.sni_routes
            .iter()
            .filter_map(|r| {
                r.matches
                    .iter()
                    .filter_map(|m| m.specificity(sni, self.port, local))
                    .max()
                    .map(|specificity| (specificity, r))
            })
            .min_by_key(|(specificity, _)| std::cmp::Reverse(*specificity))
            .map(|(_, r)| r)
    }
}

impl Listener {
    /// Whether any server on this port terminates `ISTIO_MUTUAL` (needs our identity).
    pub fn istio_mutual(&self) -> bool {
        self.tls
            .iter()
            .any(|t| matches!(t.mode, ServerTlsMode::IstioMutual))
    }
}

/// Which side of the mesh a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerKind {
    /// A Gateway port: route `port` matches compare with the Gateway port.
    Gateway,
    /// The plaintext egress listener (`MeshGateway.spec.outbound`): requests from local apps,
    /// routed by VirtualServices bound to `mesh` and by ServiceEntry host and port; route `port`
    /// matches compare with the port of the request's authority (80 by default).
    Outbound,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    /// Plaintext HTTP/1.1 (and h2c with prior knowledge).
    Http,
    /// TLS, then HTTP/1.1 or HTTP/2 by ALPN.
    Https,
    /// TLS passed through without termination, to the service Istio's SNI names
    /// (`tls.mode: AUTO_PASSTHROUGH`): an east-west gateway.
    AutoPassthrough,
    /// TLS passed through without termination, routed by VirtualService `tls` routes on its
    /// SNI (`tls.mode: PASSTHROUGH`).
    TlsPassthrough,
    /// Bytes, routed by VirtualService `tcp` routes: plaintext (`protocol: TCP`), or TLS
    /// terminated with the listener's `tls` (`protocol: TLS` with `SIMPLE`, `MUTUAL` or
    /// `ISTIO_MUTUAL`), so the client's identity is known.
    Tcp,
}

/// PROXY protocol in: connections from a trusted peer must start with a v1 or v2 header,
/// whose source address then stands for the client everywhere; others are served as they are.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyProtocol {
    /// Empty: every peer (Istio's `gatewayTopology.proxyProtocol` alone).
    pub trusted_sources: Vec<authz::Cidr>,
}

impl ProxyProtocol {
    /// Whether a connection from `peer` starts with a header.
    pub fn expects(&self, peer: std::net::IpAddr) -> bool {
        self.trusted_sources.is_empty() || self.trusted_sources.iter().any(|c| c.contains(peer))
    }
}

/// One VirtualService `tls[]` route of a `PASSTHROUGH` listener.
#[derive(Debug, Serialize)]
pub struct SniRoute {
    /// `VirtualService namespace/name`.
    pub source: String,
    /// Any one must match.
    pub matches: Vec<SniMatch>,
    /// Weights > 0.
    pub backends: Vec<WeightedBackend>,
}

/// One VirtualService `tcp[]` route of a `TCP` listener.
#[derive(Debug, Serialize)]
pub struct TcpRoute {
    /// `VirtualService namespace/name`.
    pub source: String,
    /// Any one must match; empty: every connection.
    pub matches: Vec<L4Match>,
    /// Weights > 0.
    pub backends: Vec<WeightedBackend>,
    /// With TLS terminated, the TLS groups (`Listener::tls`, one per server) of the servers of
    /// its Gateways that serve its hosts: a connection whose SNI chose another server does not
    /// take it. All on a plaintext listener.
    #[serde(skip)]
    pub tls_groups: TlsGroups,
}

impl TcpRoute {
    /// Whether a connection of TLS group `group` (`None`: plaintext) may take it.
    pub fn admits_tls_group(&self, group: Option<usize>) -> bool {
        self.tls_groups.admits(group)
    }
}

/// `tcp[].match[]`: every present part must match.
#[derive(Debug, Serialize)]
pub struct L4Match {
    /// The listener's Gateway port must be this.
    pub port: Option<u16>,
    /// The address the connection came in on must be in one.
    pub destination_subnets: Vec<authz::Cidr>,
}

impl L4Match {
    /// Whether a connection to Gateway port `port` at `local` matches.
    pub fn matches(&self, port: u16, local: std::net::IpAddr) -> bool {
        self.port.is_none_or(|p| p == port)
            && (self.destination_subnets.is_empty()
                || self.destination_subnets.iter().any(|c| c.contains(local)))
    }
}

/// `tls[].match[]`: every present part must match.
#[derive(Debug, Serialize)]
pub struct SniMatch {
    /// Any one matches the SNI (`*.example.com` and `*` too).
    pub sni_hosts: Vec<HostMatcher>,
    /// The listener's Gateway port must be this.
    pub port: Option<u16>,
    /// The address the connection came in on must be in one.
    pub destination_subnets: Vec<authz::Cidr>,
}

impl SniMatch {
    /// Whether a connection with `sni`, to Gateway port `port` at `local`, matches.
    pub fn matches(&self, sni: &str, port: u16, local: std::net::IpAddr) -> bool {
        self.specificity(sni, port, local).is_some()
    }

    /// How specifically it matches such a connection: that of its most specific SNI host that
    /// matches (`HostMatcher::specificity`), as Envoy picks a filter chain by its most
    /// specific server name; `None` when it does not match.
    pub fn specificity(&self, sni: &str, port: u16, local: std::net::IpAddr) -> Option<usize> {
        if !(self.port.is_none_or(|p| p == port)
            && (self.destination_subnets.is_empty()
                || self.destination_subnets.iter().any(|c| c.contains(local))))
        {
            return None;
        }
        self.sni_hosts
            .iter()
            .filter(|h| h.matches(sni))
            .map(HostMatcher::specificity)
            .max()
    }
}

/// Server-side TLS of one group of Gateway servers (Istio's `ServerTLSSettings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTls {
    pub mode: ServerTlsMode,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 cipher suites by their OpenSSL names, in preference order; empty: rustls'
    /// defaults. TLS 1.3 suites are not configurable, as in Envoy.
    pub cipher_suites: Vec<String>,
    /// What a client certificate must also be, once it chains (`MUTUAL`, `ISTIO_MUTUAL`).
    pub client_checks: ClientCertChecks,
}

/// A Gateway server's `subjectAltNames`, `verifyCertificateSpki` and `verifyCertificateHash`,
/// checked as Envoy's validation context checks them: every list given must accept the client's
/// leaf, except that the two pin lists together are one (a match in either accepts it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientCertChecks {
    /// One of the leaf's SANs equals one of these: a DNS SAN as Envoy matches it (no case, and
    /// a `*.` SAN stands for one label), a URI, email or IP address SAN exactly.
    pub subject_alt_names: Vec<String>,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo, lowercase hex (`verifyCertificateSpki`).
    pub spki_sha256: Vec<String>,
    /// SHA-256 of the leaf's DER, lowercase hex (`verifyCertificateHash`).
    pub cert_sha256: Vec<String>,
}

impl ClientCertChecks {
    /// Nothing to check beyond the chain.
    pub fn is_empty(&self) -> bool {
        self.subject_alt_names.is_empty()
            && self.spki_sha256.is_empty()
            && self.cert_sha256.is_empty()
    }
}

/// Gateway `tls.mode` values meshgate terminates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Our workload identity; a client certificate with a SPIFFE ID, chained to the bundle,
    /// is required and tags the request.
    IstioMutual,
    /// HTTPS with the server certificate files; no client certificate.
    Simple(ServerCertificate),
    /// HTTPS with the server certificate files; a client certificate chained to
    /// `ca_certificates` is required.
    Mutual(ServerCertificate),
    /// As `Mutual`, but a client may send no certificate: one it sends must chain and is
    /// described in XFCC; without one the connection is anonymous.
    OptionalMutual(ServerCertificate),
}

impl ServerTlsMode {
    /// The certificate files of a mode that has them (all but `ISTIO_MUTUAL`).
    pub fn files(&self) -> Option<&ServerCertificate> {
        match self {
            Self::IstioMutual => None,
            Self::Simple(c) | Self::Mutual(c) | Self::OptionalMutual(c) => Some(c),
        }
    }
}

/// The files of a `SIMPLE` or `MUTUAL` server, as Istio's file-mounted gateway certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerCertificate {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// A second certificate and key (`credentialNames`, `tlsCertificates`: RSA beside ECDSA).
    /// A handshake gets the first of the two whose key signs with a scheme the client offers,
    /// an ECDSA one before an RSA one, as Envoy chooses.
    pub second: Option<(PathBuf, PathBuf)>,
    /// Client CAs (`MUTUAL`, `OPTIONAL_MUTUAL`).
    pub ca_certificates: Option<PathBuf>,
    /// Revoked client certificates (`MUTUAL`, `OPTIONAL_MUTUAL`).
    pub ca_crl: Option<PathBuf>,
}

/// TLS protocol versions, as Istio's `TLSV1_2` and `TLSV1_3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

/// TLS 1.2 cipher suites meshgate's TLS (rustls) offers, by the OpenSSL names Istio uses.
pub const CIPHER_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305",
];

/// One host of one Gateway server.
#[derive(Debug, Clone, Serialize)]
pub struct ServerHost {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Which VirtualService namespaces may bind this host.
    pub namespace: NamespaceFilter,
    pub host: HostMatcher,
    /// The server's TLS settings: an index into `Listener::tls` (HTTPS listeners).
    pub tls: Option<usize>,
    /// `tls.httpsRedirect` of a plaintext server: requests get a 301 to `https://`.
    pub https_redirect: bool,
}

/// An upstream service: a ServiceEntry or Kubernetes Service host and port (and subset), or a
/// name resolved by DNS. Istio's cluster `outbound|port|subset|host`.
#[derive(Debug, Serialize)]
pub struct Backend {
    /// The service host, as routes name it.
    pub host: String,
    /// The service port, as routes name it; 0: the port of each request's authority (a
    /// route of the outbound listener alone to a host nothing declares, without a port).
    pub port: u16,
    /// The DestinationRule subset, when a route names one.
    pub subset: Option<String>,
    /// HTTP/1.1 or HTTP/2 towards the endpoints.
    pub protocol: BackendProtocol,
    /// Where connections go.
    pub endpoints: Endpoints,
    /// `ServiceEntry ns/name` or `Service ns/name`, or `None` for a host that nothing declares.
    pub source: Option<String>,
    /// TLS, load balancing and connection pool, from the DestinationRule for this host.
    pub policy: UpstreamPolicy,
}

/// How connections to a backend are made and chosen (a DestinationRule's `trafficPolicy`,
/// with its `portLevelSettings` for this port applied).
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamPolicy {
    pub tls: UpstreamTls,
    pub load_balancer: LoadBalancer,
    /// `connectionPool.tcp.connectTimeout`; Istio's default is 10 s.
    pub connect_timeout: std::time::Duration,
    /// `connectionPool.tcp.tcpKeepalive`; by default probes start after 60 s idle, at the
    /// system's interval and count.
    pub tcp_keepalive: TcpKeepalive,
    /// `connectionPool.http.idleTimeout`: an idle pooled connection is closed after this.
    pub idle_timeout: std::time::Duration,
    /// `connectionPool.tcp.maxConnectionDuration`: an upstream connection this old takes no
    /// new request and closes once its requests are done (Envoy's
    /// `common_http_protocol_options.max_connection_duration`). `None`: no limit.
    pub max_connection_duration: Option<std::time::Duration>,
    /// The DestinationRule's top-level `connectionPool.tcp.maxConnectionDuration`: a TCP or
    /// passthrough route's connection to the backend is closed at that age (Istio sets
    /// `tcp_proxy`'s `max_downstream_connection_duration` from the top level only).
    pub tcp_max_connection_duration: Option<std::time::Duration>,
    /// The DestinationRule's top-level `connectionPool.tcp.idleTimeout`: a TCP or passthrough
    /// route's connection is closed once nothing moved either way for this long, in place of
    /// `limits.idleTimeout` (Istio sets `tcp_proxy`'s `idle_timeout` from the top level, else
    /// from the proxy's default); zero: never.
    pub tcp_idle_timeout: Option<std::time::Duration>,
    /// `connectionPool.tcp.maxConnections`: at most this many HTTP/1.1 connections (and so
    /// requests at once) to the backend; more requests wait for one.
    pub max_connections: Option<u32>,
    /// `connectionPool.http.maxRequestsPerConnection`: a connection is closed after this many.
    pub max_requests_per_connection: Option<u32>,
    /// `connectionPool.http.maxConcurrentStreams`: at most this many requests at once on one
    /// HTTP/2 connection to an endpoint; more open another connection (Envoy's
    /// `http2_protocol_options.max_concurrent_streams` for the cluster).
    pub max_concurrent_streams: Option<u32>,
    /// `connectionPool.http.http1MaxPendingRequests`: requests waiting for one of
    /// `maxConnections`; one more is answered 503 (`UO`). `None`: unlimited, as Istio's default.
    pub max_pending_requests: Option<u32>,
    /// `connectionPool.http.http2MaxRequests`: requests in flight to the backend, whatever the
    /// protocol (as Envoy's `max_requests`); one more is answered 503 (`UO`).
    pub max_requests: Option<u32>,
    /// `connectionPool.http.maxRetries`: retries in flight to the backend; a retry over it is
    /// not made.
    pub max_retries: Option<u32>,
    /// `outlierDetection`; `None`: endpoints are never ejected.
    pub outlier_detection: Option<OutlierDetection>,
    /// `connectionPool.http.h2UpgradePolicy: UPGRADE`: an HTTP/1.1 port is spoken to as
    /// HTTP/2.
    pub h2_upgrade: bool,
    /// `proxyProtocol.version`: each connection opens with a PROXY header naming the client.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `DestinationRule ns/name`, when one applies.
    pub source: Option<String>,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self {
            tls: UpstreamTls::Disable,
            // Istio's default (`UNSPECIFIED`).
            load_balancer: LoadBalancer::LeastRequest,
            connect_timeout: std::time::Duration::from_secs(10),
            tcp_keepalive: TcpKeepalive::default(),
            idle_timeout: std::time::Duration::from_secs(60),
            max_connection_duration: None,
            tcp_max_connection_duration: None,
            tcp_idle_timeout: None,
            max_connections: None,
            max_requests_per_connection: None,
            max_concurrent_streams: None,
            max_pending_requests: None,
            max_requests: None,
            max_retries: None,
            outlier_detection: None,
            h2_upgrade: false,
            proxy_protocol: None,
            source: None,
        }
    }
}

/// The PROXY protocol version sent to a backend (`trafficPolicy.proxyProtocol.version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// TCP keepalive on upstream connections (`connectionPool.tcp.tcpKeepalive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub time: std::time::Duration,
    /// Between probes; `None`: the system's.
    pub interval: Option<std::time::Duration>,
    /// Unanswered probes before the connection is dropped; `None`: the system's.
    pub probes: Option<u32>,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        Self {
            time: std::time::Duration::from_secs(60),
            interval: None,
            probes: None,
        }
    }
}

/// A DestinationRule's `tls.mode`.
#[derive(Debug, Clone, Serialize)]
pub enum UpstreamTls {
    /// `DISABLE`: plaintext.
    Disable,
    /// `SIMPLE`: TLS, the server verified against `caCertificates` or the mesh bundle.
    Simple(ClientTls),
    /// `MUTUAL`: TLS with the client certificate files named here.
    Mutual(ClientTls),
    /// `ISTIO_MUTUAL`: TLS with our own workload identity and the mesh bundle; the server must
    /// present a SPIFFE ID (one of `subjectAltNames` when given).
    IstioMutual(ClientTls),
}

/// The settings of a TLS origination.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientTls {
    /// Overrides the SNI (default: `outbound_.<port>_._.<host>` for ISTIO_MUTUAL, the host
    /// otherwise).
    pub sni: Option<String>,
    /// The server's SPIFFE ID or DNS name must be one of these, when given.
    pub subject_alt_names: Vec<String>,
    pub ca_certificates: Option<PathBuf>,
    /// Revoked certificates of `ca_certificates`' CAs (`caCrl`): a server whose chain one
    /// revokes is refused.
    pub ca_crl: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// `insecureSkipVerify` (SIMPLE, MUTUAL): any server certificate is accepted; the server
    /// still proves it holds the certificate's key.
    pub insecure_skip_verify: bool,
    /// `credentialName`: the Secret whose files fill the fields above, read only for the
    /// backends the rule applies to (a rule this proxy does not use needs no Secret mounted).
    #[serde(skip)]
    pub secret: Option<SecretRef>,
}

/// A `credentialName` of a DestinationRule, and where it is written (for its errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub name: String,
    pub file: PathBuf,
    /// `Kind namespace/name`.
    pub resource: String,
    /// The path of the `credentialName` field.
    pub field: String,
}

/// `loadBalancer`: `simple`, or `consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    /// Requests with the same key go to the same endpoint while it is in, and few keys move
    /// when endpoints come and go.
    ConsistentHash(ConsistentHash),
}

/// `loadBalancer.consistentHash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistentHash {
    pub key: HashKey,
    pub table: HashTable,
}

/// What a request is hashed by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// `httpHeaderName`: the header's value (a request without it gets any endpoint).
    Header(#[serde(serialize_with = "route::serialize_display")] HeaderName),
    /// `httpCookie`: the cookie's value; with a `ttl`, a request without the cookie gets one
    /// (`Set-Cookie` on its response, as Envoy generates it), and without, any endpoint.
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<std::time::Duration>,
    },
    /// `useSourceIp`: the client's address (the trusted one, under `numTrustedProxies`).
    SourceIp,
    /// `httpQueryParameterName`: the query parameter's first value.
    QueryParameter(String),
}

/// How keys map to endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HashTable {
    /// `ringHash` (Istio's default): a ring of at least this many points (1024 by default).
    Ring { minimum_size: u64 },
    /// `maglev`: a lookup table of this prime size (65537 by default).
    Maglev { size: u64 },
}

/// The upstream HTTP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BackendProtocol {
    Http1,
    /// Ports with protocol `HTTP2` or `GRPC`: prior-knowledge HTTP/2.
    Http2,
    /// Bytes as they come, from `tcp` routes and passed-through TLS: no HTTP.
    Opaque,
}

/// The endpoints of a backend.
#[derive(Debug, Clone, Serialize)]
pub enum Endpoints {
    /// `resolution: STATIC`: fixed addresses.
    Static(Vec<SocketAddr>),
    /// `resolution: DNS`: names resolved when a connection is made.
    Dns(Vec<(String, u16)>),
    /// A subset no DestinationRule defines: Envoy's missing cluster, answered 503 (`NC`).
    Undefined,
}

impl Backend {
    /// `host:port`, or `host:port (subset)`, for logs and labels.
    pub fn name(&self) -> String {
        let port = match self.port {
            0 => "*".to_string(),
            p => p.to_string(),
        };
        match &self.subset {
            Some(s) => format!("{}:{port} ({s})", self.host),
            None => format!("{}:{port}", self.host),
        }
    }
}
