//! How the request path keeps its futures from being copied.
//!
//! A future is as large as its largest state: the request path's are
//! kilobytes (~3.2 KB for a request's), and every move of one is a
//! memcpy of all of it, once a request, and under load one that misses
//! the cache. Three rules keep them in one place (`BENCHMARKS.md`,
//! "Instruction counts in CI"):
//!
//! - **Boxed where built**: `Box::pin(f(args))` builds `f`'s future on the
//!   stack and copies it into the allocation; [`pinned`] allocates first
//!   and writes into the allocation, which LLVM builds in place.
//! - **Pinned where awaited**: `f(args).await`, `timeout_at(t, f(args))`
//!   and a `select!` branch take the future by value and copy it into the
//!   awaiting one; `std::pin::pin!(f(args))` builds it where it stays. Its
//!   own statement or block, so that it (and what it borrows) ends there.
//! - **No `async fn` for a step that takes the request**: an `async fn`
//!   keeps its arguments apart from the locals they are moved into
//!   (rust-lang/rust#62958), a second copy; a `fn` returning an
//!   `async move` block uses what the block captured.
//! - **One owner for the request**: a block keeps the room of what it
//!   captured for its whole life, also once that has moved on, so only
//!   the outermost step (`proxy::handle`) holds the request; the steps it
//!   awaits borrow it, and the last takes it (`proxy::taken`).

use std::pin::Pin;

/// `Box::pin(make())`, with `make`'s value built in the allocation.
#[inline(always)]
pub(crate) fn pinned<T>(make: impl FnOnce() -> T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
