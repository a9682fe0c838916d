//! Named phases of a training step (forward, losses, backward, clip, optimiser, EMA), so
//! that `xca bench` can say where a step's kernel launches go ([`crate::bench`]). Marking a
//! phase is a thread-local write; nothing else depends on it.

use std::cell::Cell;

/// The phase of work outside any [`within`].
pub const OTHER: &str = "other";

thread_local! {
    static CURRENT: Cell<&'static str> = const { Cell::new(OTHER) };
}

/// The phase this thread is in.
pub fn current() -> &'static str {
    CURRENT.with(Cell::get)
}

/// Run `f` as the phase `name` of this thread, then return to the phase before (also when
/// `f` unwinds).
pub fn within<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    struct Restore(&'static str);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(name)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_nest_and_are_restored() {
        assert_eq!(current(), OTHER);
        let inner = within("forward", || {
            assert_eq!(current(), "forward");
            within("losses", current)
        });
        assert_eq!(inner, "losses");
        assert_eq!(current(), OTHER);
        let unwound = std::panic::catch_unwind(|| within("backward", || panic!("in a phase")));
        assert!(unwound.is_err());
        assert_eq!(current(), OTHER, "restored after a panic");
        // Per thread: another thread starts outside any phase.
        within("clip", || {
            let other = std::thread::spawn(current).join().unwrap();
            assert_eq!(other, OTHER);
        });
    }
}
