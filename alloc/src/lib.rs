//! meshgate's global allocator: mimalloc, told to give free pages back to the system within
//! `PURGE_DELAY_MS`, and asked to look for such pages once a second (`collect`).
//!
//! mimalloc returns a free page to the system only once it has been free for `purge_delay`
//! (1 s by default), and only when a later allocation or free looks for expired purges. When
//! idle HTTP/1.1 connections are parked (`meshgate-proxy`'s `park`), they give hyper's buffers
//! back over a second or two and then the process goes quiet: the pages freed in the last
//! second were never returned, and after a burst of requests the resident set stayed at the
//! burst's size (32 KiB per idle connection after one request at 5,000 connections, against
//! 14 KiB with a short delay). At 0 a page goes back the moment it is free, and under
//! keep-alive load pages that empty and fill again were returned and faulted back in (2% of
//! the CPU in page faults). At 10 ms that was still 0.10 page faults per proxied request, and
//! 0.29 on a gateway sharing its core with the proxy in front of it, whose pauses let more
//! pages pass the delay; at 100 ms it is 0.01 and 0.03, and one hop takes about 6% less CPU
//! per request (BENCHMARKS.md). What a longer delay leaves behind when the process goes quiet,
//! `collect` gives back a second later.
//!
//! The only `unsafe` in meshgate's own code is here, in the calls that set and read the
//! option and that ask for a collection: mimalloc has no safe binding for them.

#![deny(unsafe_code)]

pub use mimalloc::MiMalloc;

/// How long a page stays free before it goes back to the system, in milliseconds.
pub const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay`'s index in `mi_option_e` (mimalloc 3, `include/mimalloc.h`); the
/// binding names only the options older than it.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Free pages go back to the system after `PURGE_DELAY_MS` rather than mimalloc's delay,
/// unless `MIMALLOC_PURGE_DELAY` says otherwise. Called first thing in `main`, before any
/// other thread starts.
pub fn purge_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores one option's value into mimalloc's option table; it takes
    // no pointer, and with no other thread running no read races the store. `PURGE_DELAY` is
    // an index within the table (`purge_delay_is_option_15` checks that it names the option, on
    // the pinned release).
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// Frees what the calling thread's heap holds free and gives back to the system the free pages
/// whose delay has passed, as a later allocation would; pages freed less than the delay ago
/// stay. Cheap enough for a periodic call: it walks the thread's pages that are not full and
/// the arenas' purge lists, not the blocks.
pub fn collect() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointer and works on the calling thread's own heap and on
    // the process's arenas under mimalloc's own locks; `false` purges only expired pages.
    unsafe {
        libmimalloc_sys::mi_collect(false);
    }
}

/// mimalloc's value of the purge delay, in milliseconds.
pub fn purge_delay() -> std::ffi::c_long {
    #[allow(unsafe_code)]
    // SAFETY: a load from mimalloc's option table at a valid index (as in `purge_promptly`);
    // the table is written only by `purge_promptly`, before other threads start.
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
            purge_promptly();
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

    /// Without the environment's word, the delay goes from mimalloc's default to ours. In a
    /// child too, so that no other test's thread runs beside the store.
    #[test]
    fn without_the_environment_the_delay_becomes_ours() {
        if std::env::var_os("MESHGATE_ALLOC_CHILD").is_some() {
            assert_eq!(purge_delay(), 1000);
            purge_promptly();
            assert_eq!(purge_delay(), PURGE_DELAY_MS);
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "tests::without_the_environment_the_delay_becomes_ours",
                "--nocapture",
            ])
            .env("MESHGATE_ALLOC_CHILD", "1")
            .env_remove("MIMALLOC_PURGE_DELAY")
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The test binary allocates through mimalloc too, so that `collect` has pages to give back.
    #[global_allocator]
    static GLOBAL: MiMalloc = MiMalloc;

    /// Resident memory of this process, in bytes (`/proc/self/statm`, pages of 4 KiB).
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages.saturating_mul(4096)
    }

    /// Pages freed, and then left alone past the delay, stay resident until something looks;
    /// `collect` is that look. 32 MiB in blocks of 32 KiB, written so that they are resident,
    /// then freed: nothing else allocates in the child, so only `collect` can give them back.
    #[test]
    fn collect_gives_back_pages_past_the_delay() {
        if std::env::var_os("MESHGATE_ALLOC_CHILD").is_some() {
            purge_promptly();
            let blocks: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 32 * 1024]).collect();
            let full = resident();
            drop(blocks);
            std::thread::sleep(std::time::Duration::from_millis(3 * PURGE_DELAY_MS as u64));
            let before = resident();
            collect();
            let after = resident();
            eprintln!("resident: {full} full, {before} freed, {after} collected");
            assert!(
                before + 8 * 1024 * 1024 > full,
                "pages went back before the look"
            );
            assert!(
                after + 16 * 1024 * 1024 < before,
                "collect gave back too little"
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new(exe)
            .args([
                "--exact",
                "tests::collect_gives_back_pages_past_the_delay",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MESHGATE_ALLOC_CHILD", "1")
            .env_remove("MIMALLOC_PURGE_DELAY")
            .status()
            .unwrap();
        assert!(status.success());
    }
}
