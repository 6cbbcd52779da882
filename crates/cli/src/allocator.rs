//! The allocators of gaze's programs, mimalloc for Rust and glibc's `malloc` for C libraries,
//! both told to keep the memory they free.
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
//! The `tch` backend's tensors are libtorch's, allocated by glibc's `malloc`, which `mmap`s
//! every block above its threshold (128 KiB, rising only up to 32 MiB) and unmaps it on free:
//! a `tch` training step spent 22 % of its time zeroing fresh pages and 34 s of a 90 s bench
//! run in the kernel, at 0.70–0.81 images/s. With glibc told to keep its heap, 1.23–1.26.
//!
//! Shared by the `gaze` binary and the `bench` example (`#[path]`), so both measure the same.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of `mimalloc.h` (v2 and v3), which the Rust bindings leave out.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_arena_reserve` of `mimalloc.h` (v3), in KiB.
const MI_OPTION_ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;

/// Never give freed memory back to the OS, neither Rust's (mimalloc) nor that of C libraries
/// (glibc `malloc`). Call first thing in `main`, before any thread starts.
pub fn keep_freed_memory() {
    keep_malloc_heap();
    // SAFETY: setting an option is thread-safe and takes effect at the next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    // SAFETY: as above; takes effect at the next arena reservation.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_RESERVE, 4 << 20) }
}

/// glibc: serve every block from the heap (no `mmap` per block) and never trim the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_malloc_heap() {
    for (option, name) in [
        (libc::M_MMAP_THRESHOLD, "M_MMAP_THRESHOLD"),
        (libc::M_TRIM_THRESHOLD, "M_TRIM_THRESHOLD"),
    ] {
        // SAFETY: `mallopt` only sets a parameter of the allocator; it is called before
        // other threads allocate.
        if unsafe { libc::mallopt(option, libc::c_int::MAX) } != 1 {
            eprintln!("warning: glibc refused mallopt({name}); C libraries' memory is unmapped on free");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_malloc_heap() {}

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

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_serves_a_tensor_sized_block_from_its_heap() {
        // Not `keep_freed_memory`: the test beside this one reads mimalloc's defaults.
        keep_malloc_heap();
        // Above glibc's largest dynamic threshold (32 MiB) and below the 64 MiB that a heap
        // of a thread other than the main one can hold.
        let size = 48 << 20;
        // SAFETY: a plain allocation, checked and freed below.
        // `black_box`: the compiler may drop a `malloc` whose block is only freed.
        let block = std::hint::black_box(unsafe { libc::malloc(size) });
        assert!(!block.is_null());
        // SAFETY: `mallinfo2` only reads the allocator's statistics.
        let mapped = unsafe { libc::mallinfo2() }.hblkhd;
        // SAFETY: allocated above, freed once.
        unsafe { libc::free(block) };
        // By default glibc maps such a block on its own and unmaps it on free.
        assert!(mapped < size, "{mapped} bytes in mmapped blocks");
    }
}
