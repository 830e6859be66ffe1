//! Panics inside the simulation: a hook remembers the last message (with its location) on
//! the panicking thread so the run can report it as a broken invariant, and keeps stderr quiet
//! unless asked to be verbose.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static ECHO: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

thread_local! {
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the hook (once per process). With `echo`, panics are also printed as usual.
pub fn install(echo: bool) {
    ECHO.store(echo, Ordering::Relaxed);
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            let located = match info.location() {
                Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
                None => message,
            };
            LAST.with(|last| *last.borrow_mut() = Some(located));
            if ECHO.load(Ordering::Relaxed) {
                default(info);
            }
        }));
    });
}

/// The last panic message seen on this thread, if any (and forgets it).
pub fn take_last() -> Option<String> {
    LAST.with(|last| last.borrow_mut().take())
}
