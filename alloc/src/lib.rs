//! meshgate's global allocator: mimalloc, told to give free pages back to the system within
//! `PURGE_DELAY_MS`, and asked once a second to look for pages to give back (`collect`).
//!
//! mimalloc returns free pages to the system only once its purge delay (1 s by default) has
//! passed, and only when a later allocation or free looks. When idle HTTP/1.1 connections are
//! parked (`meshgate-proxy`'s `park`), they give hyper's buffers back over a second or two and
//! then the process goes quiet: the pages freed last were never returned, and after a burst of
//! requests the resident set stayed at the burst's size (32 KiB per idle connection after one
//! request at 5,000 connections, against 14 KiB with a short delay). At 0 a page goes back the
//! moment it is free, and under keep-alive load pages that empty and fill again were returned
//! and faulted back in (2% of the CPU in page faults). At 10 ms that was still 0.10 page faults
//! per proxied request, and 0.29 on a gateway sharing its core with the proxy in front of it,
//! whose turns let more pages pass the delay; at 100 ms it is 0.01 and 0.03, and one hop took
//! 3-6% less CPU per request (BENCHMARKS.md). What the longer delay leaves resident when the
//! process goes quiet, `collect` gives back.
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

/// What a later allocation would do, now: frees the calling thread's free pages to mimalloc's
/// arenas, and gives back to the system the arenas' free pages once an arena's purge deadline
/// (the purge delay after the first free since its last purge) has passed; before that,
/// nothing goes back. Cheap enough for a periodic call: it walks the calling thread's pages
/// that are not full and the arenas' purge bitmaps, not the blocks.
///
/// Only the calling thread's heap is visited. With one worker (`--concurrency 1`) that is all
/// of the proxy's; with more, the other workers' free pages go back when they next allocate
/// or free, and what already went to the arenas (from any thread) goes back here.
pub fn collect() {
    #[allow(unsafe_code)]
    // SAFETY: `mi_collect` takes no pointer; it works on the calling thread's own heap and on
    // the process's arenas through atomic bitmaps, safe beside other threads allocating.
    // `false` asks for no forced purge.
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

    /// Runs the test `name` of this binary alone in a child process, with `MIMALLOC_PURGE_DELAY`
    /// set to `delay` or unset: the child's allocator reads its environment as it starts, and
    /// no other test's thread runs beside it. Whether the child passed.
    fn in_child(name: &str, delay: Option<&str>) -> bool {
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe);
        child
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env("MESHGATE_ALLOC_CHILD", "1");
        match delay {
            Some(d) => child.env("MIMALLOC_PURGE_DELAY", d),
            None => child.env_remove("MIMALLOC_PURGE_DELAY"),
        };
        child.status().unwrap().success()
    }

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
        assert!(
            in_child("tests::purge_delay_is_option_15", Some("777")),
            "the child saw another option at index 15"
        );
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
        assert!(in_child(
            "tests::without_the_environment_the_delay_becomes_ours",
            None
        ));
    }

    /// The test binary allocates through mimalloc too, so that `collect` has pages to give back.
    #[global_allocator]
    static GLOBAL: MiMalloc = MiMalloc;

    /// Resident pages of this process (`/proc/self/statm`), read into a buffer on the stack:
    /// an allocation here could itself purge and blur what the test reads.
    fn resident_pages() -> usize {
        use std::io::Read;
        let mut buf = [0u8; 128];
        let mut file = std::fs::File::open("/proc/self/statm").unwrap();
        let n = file.read(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Pages freed, and then left alone past the delay, stay resident until something looks;
    /// `collect` is that look. 32 MiB in blocks of 32 KiB, written so that they are resident,
    /// then freed: nothing else allocates in the child, so only `collect` can give them back.
    /// Read in pages, against what the blocks added, whatever the page size.
    #[test]
    fn collect_gives_back_pages_past_the_delay() {
        if std::env::var_os("MESHGATE_ALLOC_CHILD").is_some() {
            purge_promptly();
            let start = resident_pages();
            let blocks: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 32 * 1024]).collect();
            let full = resident_pages();
            drop(blocks);
            std::thread::sleep(std::time::Duration::from_millis(3 * PURGE_DELAY_MS as u64));
            let before = resident_pages();
            collect();
            let after = resident_pages();
            eprintln!(
                "resident pages: {start} at first, {full} full, {before} freed, {after} collected"
            );
            let added = full - start;
            assert!(added > 0, "the blocks added no resident pages");
            assert!(before > full - added / 4, "pages went back before the look");
            assert!(after < before - added / 2, "collect gave back too little");
            return;
        }
        assert!(in_child(
            "tests::collect_gives_back_pages_past_the_delay",
            None
        ));
    }
}
