//! The `wallet` program for the end-to-end tests: exactly the server binary's `main`.

fn main() -> std::process::ExitCode {
    walletd_server::main()
}
