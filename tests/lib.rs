//! End-to-end tests against real `wallet` processes live in `tests/tests/`.
