//! meshgate's global allocator: mimalloc, told to give pages back to the system as soon as
//! they are free.
//!
//! mimalloc returns a free page to the system only after `purge_delay` (1 s), and only when a
//! later allocation or free on some thread looks for expired purges. A gateway whose
//! connections have gone idle does neither: the buffers an idle HTTP/1.1 connection gives back
//! when it is parked (`meshgate-proxy`'s `park`) stayed in the process's resident set. With the
//! delay at 0 a page is returned when it becomes free. Under steady load pages rarely become
//! entirely free: a keep-alive and a handshake load of 140,000 requests made 19 `madvise`
//! calls in all (BENCHMARKS.md).
//!
//! The one `unsafe` in meshgate's own code is the call that sets the option: mimalloc has no
//! safe binding for its options.

#![deny(unsafe_code)]

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay`'s index in `mi_option_e` (mimalloc 3, `include/mimalloc.h`); the
/// binding names only the options older than it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Free pages go back to the system at once rather than after mimalloc's delay, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Called first thing in `main`, before any other thread
/// starts.
pub fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores one option's value into mimalloc's option table; it takes
    // no pointer, and with no other thread running no read races the store. `PURGE_DELAY` is
    // an index within the table (`purge_delay_is_option_15` checks that it names the option, on
    // the pinned release).
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// mimalloc's value of the purge delay, in milliseconds.
pub fn purge_delay() -> std::ffi::c_long {
    #[allow(unsafe_code)]
    // SAFETY: a load from mimalloc's option table at a valid index (as in `purge_at_once`);
    // the table is written only by `purge_at_once`, before other threads start.
    unsafe {
        libmimalloc_sys::mi_option_get(PURGE_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index names the purge delay: a value given in the environment, by the option's
    /// name, is the value read at the index. Run in a child process, whose allocator reads the
    /// environment as it starts.
    #[test]
    fn purge_delay_is_option_15() {
        if std::env::var_os("MESHGATE_ALLOC_CHILD").is_some() {
            assert_eq!(purge_delay(), 777);
            // The operator's value stands.
            purge_at_once();
            assert_eq!(purge_delay(), 777);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args(["--exact", "tests::purge_delay_is_option_15", "--nocapture"])
            .env("MESHGATE_ALLOC_CHILD", "1")
            .env("MIMALLOC_PURGE_DELAY", "777")
            .status()
            .unwrap();
        assert!(status.success(), "the child saw another option at index 15");
    }

    /// Without the environment's word, the delay goes from mimalloc's default to 0. In a
    /// child too, so that no other test's thread runs beside the store.
    #[test]
    fn without_the_environment_the_delay_becomes_zero() {
        if std::env::var_os("MESHGATE_ALLOC_CHILD").is_some() {
            assert_eq!(purge_delay(), 1000);
            purge_at_once();
            assert_eq!(purge_delay(), 0);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "tests::without_the_environment_the_delay_becomes_zero",
                "--nocapture",
            ])
            .env("MESHGATE_ALLOC_CHILD", "1")
            .env_remove("MIMALLOC_PURGE_DELAY")
            .status()
            .unwrap();
        assert!(status.success());
    }
}
