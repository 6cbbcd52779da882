//! The allocator of gaze's programs: glibc's `malloc`, for Rust and for C libraries alike,
//! told to keep the memory it frees in one heap.
//!
//! A forward pass allocates and frees tensor-sized buffers (tens of MB) by the dozen. By
//! default glibc `mmap`s every block above its threshold and unmaps it on free, so every
//! pass faults its activations in again and the kernel zeroes them; libtorch allocates
//! through `malloc` too. Kept, the memory is reused at the cost of holding the peak.
//!
//! One arena: glibc gives threads arenas of their own, and a buffer that one rayon worker
//! frees is then reused only by threads of that arena. (The measurements, and why this
//! replaced mimalloc, are in `docs/optimization-log.md`, items 14 and 15.)
//!
//! Elsewhere than glibc the platform's allocator runs as it is.
//!
//! Shared by the `gaze` binary and the `bench` example (`#[path]`), so both measure the same.

/// Never give freed memory back to the OS, and keep all of it in one heap: glibc serves
/// every block from its heap (no `mmap` per block), never trims it, and gives every thread
/// the same one. Call first thing in `main`, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    for (option, value, name) in [
        (libc::M_MMAP_THRESHOLD, libc::c_int::MAX, "M_MMAP_THRESHOLD"),
        (libc::M_TRIM_THRESHOLD, libc::c_int::MAX, "M_TRIM_THRESHOLD"),
        (libc::M_ARENA_MAX, 1, "M_ARENA_MAX"),
    ] {
        // SAFETY: `mallopt` only sets a parameter of the allocator; it is called before
        // other threads allocate.
        if unsafe { libc::mallopt(option, value) } != 1 {
            eprintln!("warning: glibc refused mallopt({name}); freed memory may be unmapped or stranded");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_serves_a_tensor_sized_block_from_its_heap() {
        keep_freed_memory();
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
