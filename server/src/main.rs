//! The `wallet` binary. Everything lives in the library (see `walletd_server::cli`), so the
//! end-to-end tests can build the very same program.

/// mimalloc rather than glibc's malloc: every request allocates on one thread (its HTTP
/// task) and frees on another (a partition's, or the journal's), which glibc's arenas pay
/// for with a lock; mimalloc frees into per-thread pages without one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    walletd_server::main()
}
