//! SPIFFE for meshgate: IDs and trust domains parsed by the SPIFFE-ID specification (`id`),
//! and what an X.509 certificate says of them by the X509-SVID specification (`svid`).
//!
//! The one home of this code: the configuration (trust domains, principals), the proxy (peer
//! identities, XFCC, issuer binding) and `meshgate pki` all use it.

#![forbid(unsafe_code)]
// No input, configuration or network bytes, may panic the process: the workspace's lints deny
// unwrap, expect, panic, unchecked arithmetic and indexing here (Cargo.toml), and where an
// invariant makes an index or an operation safe, a narrowly scoped `allow` says why. Unit tests
// may unwrap, index and panic (clippy.toml), and compute freely:
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]

mod id;
pub mod svid;

pub use id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::sha256_hex;
