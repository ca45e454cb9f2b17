//! Load balancing over a backend's endpoints: Envoy's `ROUND_ROBIN`, `RANDOM` and
//! `LEAST_REQUEST`, consistent hashing (a ring, or a Maglev table) on a key of the request, and
//! the outlier detector that ejects endpoints that keep failing.
//!
//! Lock-free: each endpoint's health is a few atomics, read on every pick and written when a
//! try ends. An ejection ends when its time is up, seen by the next pick; `interval` is how
//! often an endpoint that stayed in has its ejection count decay by one.

use std::net::IpAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Uri};

use meshgate_config::model::{HashKey, HashTable, LoadBalancer, OutlierDetection};

use super::retry::Tried;

/// How a backend picks an endpoint for a try.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    next: AtomicUsize,
    outlier: Option<OutlierDetection>,
    /// The clock of ejections: milliseconds after this.
    epoch: Instant,
}

#[derive(Debug)]
enum Policy {
    RoundRobin,
    Random,
    LeastRequest,
    Hash { key: HashKey, table: Table },
}

/// A consistent-hash table: key -> endpoint.
#[derive(Debug)]
enum Table {
    /// Points on a ring, sorted: a key goes to the first point at or after it.
    Ring(Vec<(u64, u32)>),
    /// Maglev's lookup table: a key goes to the entry at key mod its (prime) size.
    Maglev(Vec<u32>),
}

/// One endpoint's health, as the outlier detector keeps it.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// Until when it is ejected (ms on the balancer's clock); 0: it is in.
    ejected_until: AtomicU64,
    /// How many times it was ejected, decayed by one per `interval` spent in.
    ejections: AtomicU32,
    /// When its last ejection ended, for the decay.
    back_since: AtomicU64,
}

/// How a try on an endpoint ended, for the outlier detector.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No response: connect failure or reset (Envoy's local origin errors, a 503).
    LocalFailure,
    /// No response in time (a 504).
    Timeout,
}

/// What a pick sees of an endpoint.
pub trait Candidate {
    fn in_flight(&self) -> usize;
    fn health(&self) -> &Health;
}

impl Balancer {
    /// The balancer for `lb` over endpoints named `names` (their `address:port`, which place
    /// them in a hash table).
    pub fn new(lb: &LoadBalancer, outlier: Option<&OutlierDetection>, names: &[String]) -> Self {
        let policy = match lb {
            LoadBalancer::RoundRobin => Policy::RoundRobin,
            LoadBalancer::Random => Policy::Random,
            LoadBalancer::LeastRequest => Policy::LeastRequest,
            LoadBalancer::ConsistentHash(ch) => Policy::Hash {
                key: ch.key.clone(),
                table: match ch.table {
                    HashTable::Ring { minimum_size } => ring(names, minimum_size),
                    HashTable::Maglev { size } => maglev(names, size),
                },
            },
        };
        Self {
            policy,
            next: AtomicUsize::new(0),
            outlier: outlier.cloned(),
            epoch: Instant::now(),
        }
    }

    /// Whether a retry may go to another endpoint: not under consistent hashing, which keeps
    /// the endpoint the key chose (Istio drops the `previous_hosts` predicate there).
    pub fn retries_elsewhere(&self) -> bool {
        !matches!(self.policy, Policy::Hash { .. })
    }

    /// The request's hash key, when the policy hashes and the request has one. `generated`
    /// is the cookie value to hash (and set) when the cookie is missing and has a `ttl`.
    pub fn key(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client: IpAddr,
        generated: impl FnOnce() -> String,
    ) -> Key {
        let Policy::Hash { key, .. } = &self.policy else {
            return Key::default();
        };
        match key {
            HashKey::Header(name) => Key::of(headers.get(name).map(HeaderValue::as_bytes)),
            HashKey::SourceIp => match client {
                IpAddr::V4(a) => Key::of(Some(&a.octets())),
                IpAddr::V6(a) => Key::of(Some(&a.octets())),
            },
            HashKey::QueryParameter(name) => Key::of(uri.query().and_then(|q| {
                q.split('&')
                    .find_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == name).then_some(v)
                    })
                    .map(str::as_bytes)
            })),
            HashKey::Cookie { name, path, ttl } => match cookie(headers, name) {
                Some(value) => Key::of(Some(value.as_bytes())),
                None => match ttl {
                    // Envoy: without a ttl, no cookie is made and the request has no key.
                    None => Key::default(),
                    Some(ttl) => {
                        let value = generated();
                        let mut set = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if let Some(p) = path {
                            set.push_str("; Path=");
                            set.push_str(p);
                        }
                        set.push_str("; HttpOnly");
                        Key {
                            hash: Some(hash(value.as_bytes())),
                            set_cookie: HeaderValue::from_str(&set).ok(),
                        }
                    }
                },
            },
        }
    }

    /// The endpoint for a try, by the policy, among those not ejected (all of them when fewer
    /// than `minHealthPercent` are in). With `other_hosts`, one not in `tried` when a few draws
    /// find one, as Envoy's `previous_hosts` predicate with its 5 attempts. `None` when there
    /// is no endpoint, or none is in.
    pub fn pick<E: Candidate>(
        &self,
        endpoints: &[E],
        key: Option<u64>,
        tried: Tried,
        other_hosts: bool,
    ) -> Option<usize> {
        let n = NonZeroUsize::new(endpoints.len())?;
        // The clock is read only where endpoints can be ejected.
        let now = if self.outlier.is_some() {
            self.now()
        } else {
            0
        };
        let panic = self.outlier.as_ref().is_some_and(|od| {
            let out = endpoints
                .iter()
                .filter(|e| self.ejected(e.health(), now))
                .count();
            let n = n.get();
            n.saturating_sub(out).saturating_mul(100)
                < n.saturating_mul(od.min_health_percent as usize)
        });
        let usable = |i: usize| {
            endpoints
                .get(i)
                .is_some_and(|e| panic || !self.ejected(e.health(), now))
        };
        if let Policy::Hash { table, .. } = &self.policy {
            let key = key.unwrap_or_else(|| fastrand::u64(..));
            return table.lookup(key, usable);
        }
        let draws = if other_hosts { 5 } else { 1 };
        let mut choice = None;
        for _ in 0..draws {
            let i = match (n.get(), &self.policy) {
                (1, _) => 0,
                (_, Policy::RoundRobin) => self.next.fetch_add(1, Ordering::Relaxed) % n,
                // Envoy's LEAST_REQUEST: the less busy of two random choices.
                (n, Policy::LeastRequest) => {
                    let a = fastrand::usize(..n);
                    let b = fastrand::usize(..n);
                    match (endpoints.get(a), endpoints.get(b)) {
                        (Some(ea), Some(eb)) if eb.in_flight() < ea.in_flight() => b,
                        _ => a,
                    }
                }
                (n, _) => fastrand::usize(..n),
            };
            if !usable(i) {
                continue;
            }
            choice = Some(i);
            if !tried.contains(i) {
                break;
            }
        }
        // The draws found only ejected endpoints: the first one in, from a random start.
        choice.or_else(|| {
            let start = fastrand::usize(..n.get());
            (start..n.get()).chain(0..start).find(|i| usable(*i))
        })
    }

    /// Counts how a try on endpoint `i` ended, and ejects it when that makes enough
    /// consecutive errors. Returns whether it ejected it.
    pub fn record<E: Candidate>(&self, endpoints: &[E], i: usize, outcome: Outcome) -> bool {
        let Some(od) = &self.outlier else {
            return false;
        };
        let Some(h) = endpoints.get(i).map(Candidate::health) else {
            return false;
        };
        let (status, local) = match outcome {
            Outcome::Status(s) => (s, false),
            Outcome::LocalFailure => (503, true),
            Outcome::Timeout => (504, true),
        };
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let reset = |c: &AtomicU32| c.store(0, Ordering::Relaxed);
        let mut trips = false;
        if local && od.split_local {
            // Local failures count on their own, and not as 5xx; any answer resets them (the
            // connection worked).
            let n = bump(&h.consecutive_local);
            trips |= od.consecutive_local.is_some_and(|max| n >= max);
        } else {
            if !local {
                reset(&h.consecutive_local);
            }
            if status >= 500 {
                let n = bump(&h.consecutive_5xx);
                trips |= od.consecutive_5xx.is_some_and(|max| n >= max);
            } else {
                reset(&h.consecutive_5xx);
            }
            if matches!(status, 502..=504) {
                let n = bump(&h.consecutive_gateway);
                trips |= od.consecutive_gateway.is_some_and(|max| n >= max);
            } else {
                reset(&h.consecutive_gateway);
            }
        }
        trips && self.eject(endpoints, i, od)
    }

    /// Ejects endpoint `i`, unless `maxEjectionPercent` are out already (one always may be,
    /// as Envoy checks the share out before the ejection).
    fn eject<E: Candidate>(&self, endpoints: &[E], i: usize, od: &OutlierDetection) -> bool {
        let now = self.now();
        let Some(h) = endpoints.get(i).map(Candidate::health) else {
            return false;
        };
        if self.ejected(h, now) {
            return false;
        }
        let out = endpoints
            .iter()
            .filter(|e| self.ejected(e.health(), now))
            .count();
        if out.saturating_mul(100)
            >= endpoints
                .len()
                .saturating_mul(od.max_ejection_percent as usize)
        {
            return false;
        }
        // The ejection count decays by one for each `interval` the endpoint stayed in.
        let interval = NonZeroU64::new(od.interval.as_millis() as u64).unwrap_or(NonZeroU64::MIN);
        let stayed = now.saturating_sub(h.back_since.load(Ordering::Relaxed)) / interval;
        let before = u64::from(h.ejections.load(Ordering::Relaxed)).saturating_sub(stayed);
        let count = (before as u32).saturating_add(1);
        h.ejections.store(count, Ordering::Relaxed);
        let most = OutlierDetection::MAX_EJECTION_TIME.max(od.base_ejection_time);
        let time = od.base_ejection_time.saturating_mul(count).min(most);
        let until = now.saturating_add(time.as_millis() as u64);
        h.ejected_until.store(until.max(1), Ordering::Relaxed);
        h.back_since.store(until, Ordering::Relaxed);
        for c in [
            &h.consecutive_5xx,
            &h.consecutive_gateway,
            &h.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        true
    }

    /// The endpoints ejected now.
    pub fn ejected_now<E: Candidate>(&self, endpoints: &[E]) -> usize {
        let now = self.now();
        endpoints
            .iter()
            .filter(|e| self.ejected(e.health(), now))
            .count()
    }

    fn ejected(&self, h: &Health, now: u64) -> bool {
        self.outlier.is_some() && now < h.ejected_until.load(Ordering::Relaxed)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// A request's consistent-hash key, and the cookie to set when one was made for it.
#[derive(Debug, Default)]
pub struct Key {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

impl Key {
    fn of(bytes: Option<&[u8]>) -> Self {
        Self {
            hash: bytes.map(hash),
            set_cookie: None,
        }
    }
}

impl Table {
    /// The endpoint for `key`: the one the table names, or, when it is out, the next one in
    /// (on the ring, the next point; in Maglev's table, the next entry).
    fn lookup(&self, key: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Table::Ring(points) => {
                let start = points.partition_point(|(h, _)| *h < key);
                let (before, after) = points.split_at_checked(start)?;
                after
                    .iter()
                    .chain(before)
                    .map(|(_, i)| *i as usize)
                    .find(|i| usable(*i))
            }
            Table::Maglev(entries) => {
                let start = key.checked_rem(entries.len() as u64)? as usize;
                let (before, after) = entries.split_at_checked(start)?;
                after
                    .iter()
                    .chain(before)
                    .map(|i| *i as usize)
                    .find(|i| usable(*i))
            }
        }
    }
}

/// A ring of at least `minimum` points, an equal share per endpoint, each point the hash of
/// `name_k` (as Envoy's ring hash places hosts).
fn ring(names: &[String], minimum: u64) -> Table {
    if names.is_empty() {
        return Table::Ring(Vec::new());
    }
    let per = minimum.div_ceil(names.len() as u64).max(1);
    let mut points = Vec::with_capacity((per as usize).saturating_mul(names.len()));
    for (i, name) in names.iter().enumerate() {
        for k in 0..per {
            points.push((hash(format!("{name}_{k}").as_bytes()), i as u32));
        }
    }
    points.sort_unstable();
    Table::Ring(points)
}

/// Maglev's lookup table of prime `size`: each endpoint walks its own permutation of the
/// entries (an offset and a skip from two hashes of its name), and they take turns claiming
/// the next free entry on theirs until the table is full.
///
/// `size` is a prime of at most 5000011 (the configuration is refused otherwise), so that no
/// arithmetic here can overflow or divide by zero, and every skip, in `1..size`, is coprime
/// with it: each permutation visits every entry, so the walks end and every `c` indexes
/// `entries` (`c < size`). Anything below 2 makes an empty table (no endpoint is picked).
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
fn maglev(names: &[String], size: u64) -> Table {
    if names.is_empty() || size < 2 {
        return Table::Maglev(Vec::new());
    }
    let m = size as usize;
    // Per endpoint: offset, skip, and how far along its permutation it is.
    let mut perms: Vec<(u64, u64, u64)> = names
        .iter()
        .map(|name| {
            let offset = hash(name.as_bytes()) % size;
            let skip = hash(format!("{name}#skip").as_bytes()) % (size - 1) + 1;
            (offset, skip, 0)
        })
        .collect();
    let mut entries = vec![u32::MAX; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip, next)) in perms.iter_mut().enumerate() {
            let mut c = ((*offset + *next * *skip) % size) as usize;
            while entries[c] != u32::MAX {
                *next += 1;
                c = ((*offset + *next * *skip) % size) as usize;
            }
            entries[c] = i as u32;
            *next += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    Table::Maglev(entries)
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// FNV-1a, then a 64-bit finalizer (splitmix64's) so that near keys land far apart.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_config::model::ConsistentHash;
    use std::time::Duration;

    #[derive(Default)]
    struct E(Health);

    impl Candidate for E {
        fn in_flight(&self) -> usize {
            0
        }
        fn health(&self) -> &Health {
            &self.0
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn hashed(table: HashTable, n: usize) -> Balancer {
        let lb = LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::SourceIp,
            table,
        });
        Balancer::new(&lb, None, &names(n))
    }

    #[test]
    fn consistent_hashing_keeps_keys_and_moves_few_when_an_endpoint_goes() {
        for table in [
            HashTable::Ring { minimum_size: 1024 },
            HashTable::Maglev { size: 65537 },
        ] {
            let five: Vec<E> = (0..5).map(|_| E::default()).collect();
            let four: Vec<E> = (0..4).map(|_| E::default()).collect();
            let (b5, b4) = (hashed(table, 5), hashed(table, 4));
            let keys: Vec<u64> = (0..2000u64).map(|k| hash(&k.to_be_bytes())).collect();
            let at5: Vec<usize> = keys
                .iter()
                .map(|k| b5.pick(&five, Some(*k), Tried::default(), false).unwrap())
                .collect();
            // The same key, the same endpoint.
            for (k, want) in keys.iter().zip(&at5) {
                assert_eq!(
                    b5.pick(&five, Some(*k), Tried::default(), false),
                    Some(*want)
                );
            }
            // Every endpoint takes a fair share.
            for e in 0..5 {
                let share = at5.iter().filter(|i| **i == e).count();
                assert!(
                    (250..=550).contains(&share),
                    "{table:?}: endpoint {e} has {share}"
                );
            }
            // Without the last endpoint, its keys move, and few others (a ring gives each
            // endpoint a share of its minimum size, so the points move a little too).
            let moved = keys
                .iter()
                .zip(&at5)
                .filter(|(k, was)| {
                    **was != 4 && b4.pick(&four, Some(**k), Tried::default(), false) != Some(**was)
                })
                .count();
            assert!(moved < 320, "{table:?}: {moved} of 2000 keys moved");
        }
    }

    #[test]
    fn consecutive_5xx_eject_an_endpoint_and_it_comes_back_after_the_base_time() {
        let od = OutlierDetection {
            consecutive_5xx: Some(3),
            base_ejection_time: Duration::from_millis(50),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let b = Balancer::new(&LoadBalancer::RoundRobin, Some(&od), &names(2));
        let eps = [E::default(), E::default()];
        assert!(!b.record(&eps, 0, Outcome::Status(503)));
        assert!(
            !b.record(&eps, 0, Outcome::Status(200)),
            "a success resets the count"
        );
        assert!(!b.record(&eps, 0, Outcome::Status(500)));
        assert!(!b.record(&eps, 0, Outcome::LocalFailure));
        assert!(
            b.record(&eps, 0, Outcome::Timeout),
            "5xx, connect failure, timeout: 3"
        );
        assert_eq!(b.ejected_now(&eps), 1);
        for _ in 0..20 {
            assert_eq!(b.pick(&eps, None, Tried::default(), false), Some(1));
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.ejected_now(&eps), 0);
        // 4xx is not an error.
        for _ in 0..10 {
            assert!(!b.record(&eps, 1, Outcome::Status(404)));
        }
    }

    #[test]
    fn max_ejection_percent_lets_one_out_and_min_health_percent_panics() {
        let od = OutlierDetection {
            consecutive_5xx: Some(1),
            ..OutlierDetection::default()
        };
        // 10% of 4 endpoints is none, but one may always be out.
        let b = Balancer::new(&LoadBalancer::RoundRobin, Some(&od), &names(4));
        let eps: Vec<E> = (0..4).map(|_| E::default()).collect();
        assert!(b.record(&eps, 0, Outcome::Status(500)));
        assert!(!b.record(&eps, 1, Outcome::Status(500)));
        assert_eq!(b.ejected_now(&eps), 1);

        let od = OutlierDetection {
            consecutive_5xx: Some(1),
            max_ejection_percent: 100,
            min_health_percent: 60,
            ..OutlierDetection::default()
        };
        let b = Balancer::new(&LoadBalancer::RoundRobin, Some(&od), &names(2));
        let eps = [E::default(), E::default()];
        assert!(b.record(&eps, 0, Outcome::Status(502)));
        // Half the endpoints in is under 60%: every endpoint takes traffic again.
        let picked: std::collections::BTreeSet<_> = (0..10)
            .map(|_| b.pick(&eps, None, Tried::default(), false).unwrap())
            .collect();
        assert_eq!(picked.len(), 2);
    }

    #[test]
    fn gateway_errors_and_split_local_failures_count_on_their_own() {
        let od = OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway: Some(2),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let b = Balancer::new(&LoadBalancer::RoundRobin, Some(&od), &names(2));
        let eps = [E::default(), E::default()];
        assert!(!b.record(&eps, 0, Outcome::Status(500)));
        assert!(
            !b.record(&eps, 0, Outcome::Status(500)),
            "500 is not a gateway error"
        );
        assert!(!b.record(&eps, 0, Outcome::Status(502)));
        assert!(b.record(&eps, 0, Outcome::LocalFailure));

        let od = OutlierDetection {
            split_local: true,
            consecutive_local: Some(2),
            consecutive_5xx: Some(5),
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        let b = Balancer::new(&LoadBalancer::RoundRobin, Some(&od), &names(2));
        assert!(!b.record(&eps, 1, Outcome::LocalFailure));
        assert!(
            !b.record(&eps, 1, Outcome::Status(503)),
            "an answer resets them"
        );
        assert!(!b.record(&eps, 1, Outcome::LocalFailure));
        assert!(b.record(&eps, 1, Outcome::Timeout));
    }

    #[test]
    fn a_cookie_with_a_ttl_is_made_when_missing_and_read_when_sent() {
        let lb = LoadBalancer::ConsistentHash(ConsistentHash {
            key: HashKey::Cookie {
                name: "user".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(60)),
            },
            table: HashTable::Ring { minimum_size: 64 },
        });
        let b = Balancer::new(&lb, None, &names(3));
        let uri = Uri::from_static("/");
        let ip = IpAddr::from([127, 0, 0, 1]);
        let made = b.key(&HeaderMap::new(), &uri, ip, || "abc".into());
        assert_eq!(
            made.set_cookie.unwrap(),
            "user=\"abc\"; Max-Age=60; Path=/; HttpOnly"
        );
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("a=1; user=\"abc\""));
        let sent = b.key(&headers, &uri, ip, || unreachable!());
        assert_eq!(sent.hash, made.hash);
        assert!(sent.set_cookie.is_none());
    }
}
