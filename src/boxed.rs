//! Futures boxed where they are built.
//!
//! `Box::pin(f(args))` builds `f`'s future on the stack and then copies
//! all of it into the allocation, for a future the size of its largest
//! state: the request path's is ~4.9 KiB, about 400 instructions of
//! memcpy a request, and under load a copy that misses the cache.
//! Allocating first and writing the value into the allocation lets LLVM
//! build it there (`BENCHMARKS.md`, "Instruction counts in CI").

use std::pin::Pin;

/// `Box::pin(make())`, with `make`'s value built in the allocation.
#[inline(always)]
pub(crate) fn pinned<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
