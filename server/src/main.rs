//! The `wallet` binary. Everything lives in the library (see `walletd_server::cli`), so the
//! end-to-end tests can build the very same program.

fn main() -> std::process::ExitCode {
    walletd_server::main()
}
