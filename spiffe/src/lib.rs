//! SPIFFE for meshgate: IDs and trust domains parsed by the SPIFFE-ID specification (`id`),
//! and what an X.509 certificate says of them by the X509-SVID specification (`svid`).
//!
//! The one home of this code: the configuration (trust domains, principals), the proxy (peer
//! identities, XFCC, issuer binding) and `meshgate pki` all use it.

#![forbid(unsafe_code)]

mod id;
pub mod svid;

pub use id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::sha256_hex;
