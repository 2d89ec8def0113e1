//! A sub-millisecond timer for the data path: a Linux `timerfd` driven by tokio's reactor.
//!
//! Tokio's timer wheel has a 1 ms resolution and rounds every deadline up to the next tick, so
//! a 5 ms latency toxic built on `sleep_until` added 5.5-6.5 ms: the request plus the rounding
//! plus the wake-up. Toxiproxy's Go timers fire within microseconds of the deadline, and the
//! proxy must add the latency it is asked for, not more. A `timerfd` armed with an absolute
//! `CLOCK_MONOTONIC` deadline is an hrtimer: no slack, no tick rounding. `std::time::Instant`
//! reads the same clock on Linux, so deadlines convert by one offset taken at arming time.
//!
//! One timer per pump, created when a toxic first needs one: a plain copy never opens it.
//! Elsewhere than Linux, or if the kernel refuses a timerfd (descriptor limit), the timer
//! falls back to tokio's, which is coarser but correct.

use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct PreciseTimer {
    inner: Inner,
}

enum Inner {
    #[cfg(target_os = "linux")]
    Fd {
        fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
        /// The deadline the descriptor is armed for and that has not been consumed yet: a
        /// re-wait for the same deadline (the select that polled it chose another branch)
        /// must not re-arm, or an expiry already delivered would be lost.
        armed: Option<Instant>,
    },
    Coarse,
}

impl PreciseTimer {
    pub(crate) fn new() -> PreciseTimer {
        #[cfg(target_os = "linux")]
        if let Ok(fd) = linux::timerfd() {
            // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which then owns it: it stays
            // open and the same descriptor until the AsyncFd drops it.
            let registered =
                unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
            if let Ok(fd) = registered {
                return PreciseTimer { inner: Inner::Fd { fd, armed: None } };
            }
        }
        PreciseTimer { inner: Inner::Coarse }
    }

    /// Completes at `at` (at once if it has passed). Cancel-safe: dropping the future and
    /// waiting again for the same deadline loses nothing.
    pub(crate) async fn sleep_until(&mut self, at: Instant) {
        match &mut self.inner {
            #[cfg(target_os = "linux")]
            Inner::Fd { fd, armed } => {
                if at <= Instant::now() {
                    *armed = None;
                    return;
                }
                if *armed != Some(at) {
                    if linux::arm(fd.get_ref(), at).is_err() {
                        return tokio::time::sleep_until(at).await;
                    }
                    *armed = Some(at);
                }
                loop {
                    let Ok(mut ready) = fd.readable().await else {
                        return tokio::time::sleep_until(at).await;
                    };
                    match ready.try_io(|fd| linux::consume(fd.get_ref())) {
                        Ok(Ok(())) => {
                            *armed = None;
                            return;
                        }
                        Ok(Err(_)) => return tokio::time::sleep_until(at).await,
                        // Readiness left over from an earlier expiry: wait for this one.
                        Err(_would_block) => continue,
                    }
                }
            }
            Inner::Coarse => tokio::time::sleep_until(at).await,
        }
    }

    /// Sleeps `d` from now.
    pub(crate) async fn sleep(&mut self, d: Duration) {
        self.sleep_until(Instant::now() + d).await
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::time::Instant;

    pub(super) fn timerfd() -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; the result is checked before it is wrapped.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn monotonic_now() -> libc::timespec {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts
    }

    /// Arms `fd` to expire once at `at`, as an absolute CLOCK_MONOTONIC time.
    pub(super) fn arm(fd: &OwnedFd, at: Instant) -> io::Result<()> {
        let ahead = at.saturating_duration_since(Instant::now());
        let now = monotonic_now();
        let nanos = now.tv_nsec as u64 + ahead.subsec_nanos() as u64;
        let value = libc::timespec {
            tv_sec: now.tv_sec + ahead.as_secs() as libc::time_t + (nanos / 1_000_000_000) as libc::time_t,
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: `fd` is a timerfd we own; `spec` is a valid itimerspec; no old value wanted.
        let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the expiry count; `WouldBlock` when the timer has not expired since it was armed.
    pub(super) fn consume(fd: &OwnedFd) -> io::Result<()> {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a u64 we own, as timerfd(2) prescribes.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_at_the_deadline_not_before_and_survives_a_dropped_wait() {
        let mut timer = PreciseTimer::new();
        let at = Instant::now() + Duration::from_millis(3);
        // A wait abandoned before the deadline (as a select does) must not lose the expiry.
        assert!(tokio::time::timeout(Duration::from_micros(500), timer.sleep_until(at)).await.is_err());
        timer.sleep_until(at).await;
        assert!(Instant::now() >= at, "woke before the deadline");
        // A passed deadline returns at once, and the timer is reusable.
        timer.sleep_until(at).await;
        let next = Instant::now() + Duration::from_millis(2);
        timer.sleep_until(next).await;
        assert!(Instant::now() >= next);
    }
}
