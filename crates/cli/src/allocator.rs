//! The allocator of gaze's programs: mimalloc, told to keep the memory it frees.
//!
//! A forward pass allocates and frees tensor-sized buffers (tens of MB) by the dozen. glibc
//! malloc maps and unmaps each one, and mimalloc by default hands freed pages back to the OS
//! after a second, shorter than a training step, so every pass faulted its activations in
//! again and the kernel zeroed them:
//! 20 % of a ViT-S inference and 40 % of a training step were spent in `clear_page_erms`
//! (`docs/benchmarks.md`). Kept, the memory is reused at the cost of holding the peak.
//! mimalloc also reserves address space in arenas of 1 GiB, and a training step's peak (about
//! 4 GB at ViT-S batch 8) then spans several; arenas of 4 GiB cut the system time of a
//! training run by about 40 % and sped the step up by about 5 % in alternating runs.
//!
//! Shared by the `gaze` binary and the `bench` example (`#[path]`), so both measure the same.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of `mimalloc.h` (v2 and v3), which the Rust bindings leave out.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_arena_reserve` of `mimalloc.h` (v3), in KiB.
const MI_OPTION_ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;

/// Never give freed memory back to the OS. Call first thing in `main`.
pub fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and takes effect at the next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    // SAFETY: as above; takes effect at the next arena reservation.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_RESERVE, 4 << 20) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_are_the_purge_delay_and_the_arena_size() {
        // SAFETY: reading and setting options is thread-safe.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc 3's default (src/options.c) is 1000 ms; a wrong index reads another option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(), 1000);
        }
        let arena = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_RESERVE) };
        if std::env::var_os("MIMALLOC_ARENA_RESERVE").is_none() {
            assert_eq!(arena(), 1 << 20, "mimalloc 3's default arena is 1 GiB (in KiB)");
        }
        keep_freed_memory();
        assert_eq!(get(), -1);
        assert_eq!(arena(), 4 << 20);
    }
}
