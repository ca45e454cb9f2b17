//! Client chains verified before. A sidecar opens its connections with the same certificate
//! chain for the life of its certificate (a day in Istio), and verifying that chain again
//! costs two of a full handshake's five public-key operations: the intermediate's signature on
//! the leaf and the root's on the intermediate.
//!
//! What webpki concludes about a chain depends on the chain's bytes, the roots and CRLs, and
//! the time; the roots and CRLs are fixed for a verifier (a new bundle, CRL or reload builds a
//! new verifier, and a new cache with it), and the time counts only through the validity of the
//! certificates and, with `expiredCrl: DENY`, the CRLs' `nextUpdate`. So a slot keeps the
//! SHA-256 of a chain that verified, and the window in which every certificate sent is valid
//! and no CRL has expired; inside that window webpki would find the same path again. Nothing
//! that failed is kept. The client's signature over the handshake, which proves it holds the
//! leaf's key, is checked on every handshake, as are the SPIFFE ID, the trust-domain
//! allow-list and issuer binding (on the path kept here).
//!
//! Slots are direct-mapped by hash and replaced on collision: a lookup is one atomic load, no
//! lock, and the memory is bounded whatever callers send.

#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};
use aws_lc_rs::digest;
use rustls::pki_types::{CertificateDer, UnixTime};

/// Slots per verifier: distinct client chains (one per workload) kept at once.
const SLOTS: usize = 4096;

/// The chains a verifier has accepted, each with the window its verdict holds.
#[derive(Debug)]
pub(super) struct VerifiedChains {
    slots: Box<[ArcSwapOption<Verified>]>,
    /// How long the CRLs let a verdict hold.
    crls: CrlWindow,
    #[cfg(test)]
    hits: AtomicU64,
}

/// What the CRLs add to a verdict's window.
#[derive(Debug, Clone, Copy)]
enum CrlWindow {
    /// No CRL, or an expired one is still used (`expiredCrl: USE`): nothing.
    Unbounded,
    /// `expiredCrl: DENY`: the verdict ends before this second, the first at which a CRL
    /// has expired.
    Before(u64),
    /// `expiredCrl: DENY` with a CRL whose `nextUpdate` could not be read: nothing is kept.
    Unknown,
}

/// A chain that verified: its key, the seconds (inclusive) between which the verdict holds,
/// and the SPKI SHA-256 path found (with issuer binding).
#[derive(Debug)]
pub(super) struct Verified {
    key: ChainKey,
    from: u64,
    until: u64,
    pub(super) path: Option<Vec<String>>,
}

/// SHA-256 over the chain sent: each certificate's length and bytes, leaf first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChainKey([u8; 32]);

impl ChainKey {
    pub(super) fn of(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for cert in std::iter::once(end_entity).chain(intermediates) {
            ctx.update(&(cert.len() as u64).to_be_bytes());
            ctx.update(cert);
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        Self(key)
    }

    fn slot(&self) -> usize {
        let [a, b, c, d, ..] = self.0;
        u32::from_le_bytes([a, b, c, d]) as usize % SLOTS
    }
}

impl VerifiedChains {
    /// `crls` are the verifier's CRLs; `deny_expired` whether an expired one fails a chain.
    pub(super) fn new(
        crls: &[rustls::pki_types::CertificateRevocationListDer<'_>],
        deny_expired: bool,
    ) -> Self {
        let first_expiry = || {
            crls.iter().try_fold(u64::MAX, |first, der| {
                let (_, crl) = x509_parser::parse_x509_crl(der).ok()?;
                let next = u64::try_from(crl.next_update()?.timestamp()).ok()?;
                Some(first.min(next))
            })
        };
        let crls = if !deny_expired || crls.is_empty() {
            CrlWindow::Unbounded
        } else {
            first_expiry().map_or(CrlWindow::Unknown, CrlWindow::Before)
        };
        Self {
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            crls,
            #[cfg(test)]
            hits: AtomicU64::new(0),
        }
    }

    /// The verdict kept for `key`, if it holds at `now`.
    pub(super) fn get(
        &self,
        key: &ChainKey,
        now: UnixTime,
    ) -> Option<Guard<Option<Arc<Verified>>>> {
        let slot = self.slots.get(key.slot())?.load();
        let now = now.as_secs();
        let held = slot
            .as_ref()
            .is_some_and(|v| v.key == *key && v.from <= now && now <= v.until);
        #[cfg(test)]
        if held {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        held.then_some(slot)
    }

    /// Keeps the verdict that `end_entity` and `intermediates` verified at `now`, when the
    /// window in which it holds can be read and contains `now`.
    pub(super) fn insert(
        &self,
        key: ChainKey,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        path: Option<Vec<String>>,
    ) {
        let crl_until = match self.crls {
            CrlWindow::Unbounded => u64::MAX,
            CrlWindow::Before(expiry) => expiry.saturating_sub(1),
            CrlWindow::Unknown => return,
        };
        let Some((from, until)) = validity(end_entity, intermediates) else {
            return;
        };
        let until = until.min(crl_until);
        let now = now.as_secs();
        if !(from <= now && now <= until) {
            return;
        }
        if let Some(slot) = self.slots.get(key.slot()) {
            slot.store(Some(Arc::new(Verified {
                key,
                from,
                until,
                path,
            })));
        }
    }

    /// How many verdicts were reused.
    #[cfg(test)]
    pub(super) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The latest `notBefore` and earliest `notAfter` of the certificates sent, in seconds since
/// the epoch; `None` when one cannot be read.
fn validity(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    std::iter::once(end_entity).chain(intermediates).try_fold(
        (0, u64::MAX),
        |(from, until), der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let validity = cert.validity();
            let not_before = u64::try_from(validity.not_before.timestamp()).ok()?;
            let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
            Some((from.max(not_before), until.min(not_after)))
        },
    )
}
