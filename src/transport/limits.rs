//! The transport's admission and reading limits (issue 8): connections in
//! their handshake and per IP address, the minimum rate of a frame under
//! way, and the node's memory budget for partially received frames. See
//! `docs/robustness.md`.

use super::Conn;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Bytes of a partial frame each connection may hold outside the budget,
/// so that small frames never wait for it.
pub(crate) const FREE_PER_CONN: usize = 64 * 1024;

/// How much a connection's buffer, holding `held` bytes, may grow in one
/// read, at most: the decoder doubles up to its growth step, and one read.
fn growth(held: usize) -> usize {
    held.min(crate::wire::MAX_GROWTH) + super::conn::READ_CHUNK
}

/// A warning logged at most once a second, with the count of the ones not
/// logged in between.
pub(crate) struct Throttled {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub(crate) fn new() -> Throttled {
        Throttled {
            state: Mutex::new((None, 0)),
        }
    }

    /// Log `what()` now unless a warning was logged less than a second ago.
    pub(crate) fn warn(&self, what: impl FnOnce() -> String) {
        let mut g = self.state.lock();
        let now = Instant::now();
        if g.0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            g.1 += 1;
            return;
        }
        let skipped = std::mem::take(&mut g.1);
        g.0 = Some(now);
        drop(g);
        if skipped > 0 {
            log::warn!("{} (and {skipped} more like it in the last second)", what());
        } else {
            log::warn!("{}", what());
        }
    }
}

/// Inbound connections being admitted: how many are in their handshake,
/// and how many come from each IP address.
pub(crate) struct Admission {
    handshaking: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why an inbound connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many connections in their handshake.
    Handshaking(usize),
    /// Too many connections from this address.
    PerIp(usize),
}

/// An admitted inbound connection: gives its places back when dropped.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    handshaking: bool,
}

impl Admitted {
    /// The handshake is over (done or failed): free its handshake place.
    pub(crate) fn greeted(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.admission.handshaking.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.greeted();
        if let Some(ip) = self.ip {
            let mut g = self.admission.per_ip.lock();
            if let Some(n) = g.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    g.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// Addresses with a count (for the tests' table sizes).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn addresses(&self) -> usize {
        self.per_ip.lock().len()
    }

    pub(crate) fn new() -> Arc<Admission> {
        Arc::new(Admission {
            handshaking: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Connections in their handshake now.
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking.load(Ordering::Acquire)
    }

    /// Admit a connection from `ip`, if at most `max_handshaking` are in
    /// their handshake and `per_ip` (when some) from that address.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_handshaking: usize,
        per_ip: Option<usize>,
    ) -> Result<Admitted, Refusal> {
        let max_handshaking = max_handshaking.max(1);
        self.handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_handshaking).then_some(n + 1)
            })
            .map_err(|_| Refusal::Handshaking(max_handshaking))?;
        let mut admitted = Admitted {
            admission: Arc::clone(self),
            ip: None,
            handshaking: true,
        };
        if let Some(cap) = per_ip {
            let mut g = self.per_ip.lock();
            let n = g.entry(ip).or_insert(0);
            if *n >= cap {
                if *n == 0 {
                    g.remove(&ip);
                }
                drop(g);
                return Err(Refusal::PerIp(cap));
            }
            *n += 1;
            admitted.ip = Some(ip);
        }
        Ok(admitted)
    }
}

/// The deadline of a frame under way: it must bring at least
/// `rate × window` bytes in every `window`. Pure: time is a parameter.
#[derive(Debug)]
pub(crate) struct FrameClock {
    rate: u64,
    window: Duration,
    /// When the current window began, while a frame is under way.
    since: Option<Instant>,
    bytes: u64,
}

impl FrameClock {
    /// A clock requiring `rate` bytes a second over each `window` (0: none).
    pub(crate) fn new(rate: u64, window: Duration) -> FrameClock {
        FrameClock {
            rate,
            window: window.max(Duration::from_millis(1)),
            since: None,
            bytes: 0,
        }
    }

    /// Whether a frame is under way with a rate to keep: otherwise
    /// [`FrameClock::check`] passes whatever the time, and a caller need
    /// not read the clock for it.
    pub(crate) fn running(&self) -> bool {
        self.since.is_some() && self.rate > 0
    }

    /// No frame is under way after the bytes that arrived: the same as
    /// [`FrameClock::on_bytes`] with `in_frame` false, without a time.
    pub(crate) fn between_frames(&mut self) {
        self.since = None;
        self.bytes = 0;
    }

    /// `n` bytes arrived (counted before they were decoded); `in_frame`
    /// says whether a frame is under way after decoding them, and
    /// `completed` whether a frame was completed by them.
    pub(crate) fn on_bytes(&mut self, n: usize, in_frame: bool, completed: bool, now: Instant) {
        if !in_frame {
            self.since = None;
            self.bytes = 0;
        } else if self.since.is_none() || completed {
            // A new frame begins: its window starts now.
            self.since = Some(now);
            self.bytes = 0;
        } else {
            self.bytes += n as u64;
        }
    }

    /// The node did not read for a while (its own backpressure): that time
    /// does not count against the frame.
    pub(crate) fn restart(&mut self, now: Instant) {
        if self.since.is_some() {
            self.since = Some(now);
            self.bytes = 0;
        }
    }

    /// `Err((bytes, window))` when a full window has passed with fewer
    /// bytes than the rate requires.
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), (u64, Duration)> {
        let Some(since) = self.since.filter(|_| self.rate > 0) else {
            return Ok(());
        };
        if now.duration_since(since) < self.window {
            return Ok(());
        }
        let need = (self.rate as f64 * self.window.as_secs_f64()) as u64;
        if self.bytes < need {
            return Err((self.bytes, self.window));
        }
        self.since = Some(now);
        self.bytes = 0;
        Ok(())
    }
}

/// The node's budget for bytes of partially received frames.
pub(crate) struct Memory {
    limit: usize,
    state: Mutex<Holders>,
    freed: Condvar,
}

#[derive(Default)]
struct Holders {
    /// Bytes charged (held beyond [`FREE_PER_CONN`]) over all connections.
    used: usize,
    by_conn: HashMap<u64, (usize, Weak<Conn>)>,
}

impl Memory {
    /// Connections charged (for the tests' table sizes).
    #[cfg(feature = "unstable-testing")]
    pub(crate) fn holders(&self) -> usize {
        self.state.lock().by_conn.len()
    }

    pub(crate) fn new(limit: usize) -> Memory {
        Memory {
            limit,
            state: Mutex::new(Holders::default()),
            freed: Condvar::new(),
        }
    }

    /// Record that `conn` holds `held` bytes of partial frames now.
    pub(crate) fn set(&self, conn: &Arc<Conn>, held: usize) {
        let charge = held.saturating_sub(FREE_PER_CONN);
        let mut g = self.state.lock();
        let before = g.by_conn.get(&conn.id).map_or(0, |(c, _)| *c);
        if charge == before {
            return;
        }
        g.used = g.used - before + charge;
        if charge == 0 {
            g.by_conn.remove(&conn.id);
        } else {
            g.by_conn.insert(conn.id, (charge, Arc::downgrade(conn)));
        }
        if charge < before {
            self.freed.notify_all();
        }
    }

    /// Whether `conn`, holding `held` bytes, may read more now: its next
    /// read could grow it by [`growth`].
    fn fits(&self, g: &Holders, conn: u64, held: usize) -> bool {
        let mine = g.by_conn.get(&conn).map_or(0, |(c, _)| *c);
        let next = (held + growth(held)).saturating_sub(FREE_PER_CONN);
        next == 0 || g.used - mine + next <= self.limit
    }

    /// Wait until `conn` (holding `held` bytes) may read more, at most until
    /// `deadline` or until `gone()`. Returns whether there is room; true at
    /// once when there is.
    pub(crate) fn wait_room(
        &self,
        conn: u64,
        held: usize,
        deadline: Instant,
        gone: impl Fn() -> bool,
    ) -> bool {
        let mut g = self.state.lock();
        loop {
            if self.fits(&g, conn, held) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || gone() {
                return false;
            }
            let slice = (now + Duration::from_millis(100)).min(deadline);
            let _ = self.freed.wait_until(&mut g, slice);
        }
    }

    /// The connection holding the most bytes of partial frames, and how many.
    pub(crate) fn largest(&self) -> Option<(Arc<Conn>, usize)> {
        let g = self.state.lock();
        g.by_conn
            .values()
            .filter_map(|(c, w)| w.upgrade().map(|conn| (conn, *c)))
            .max_by_key(|(_, c)| *c)
    }

    /// The budget in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_must_keep_arriving() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut c = FrameClock::new(100, Duration::from_secs(1));
        // Nothing under way: no deadline however long.
        c.on_bytes(10, false, true, s(0));
        assert_eq!(c.check(s(10_000)), Ok(()));
        // A frame begins; 150 bytes in the first second: fine.
        c.on_bytes(8, true, false, s(10_000));
        c.on_bytes(150, true, false, s(10_500));
        assert_eq!(c.check(s(11_000)), Ok(()));
        // The next second brings 50: too slow.
        c.on_bytes(50, true, false, s(11_500));
        assert_eq!(c.check(s(11_900)), Ok(()));
        assert_eq!(c.check(s(12_000)), Err((50, Duration::from_secs(1))));
        // Time the node did not read does not count.
        c.restart(s(12_000));
        assert_eq!(c.check(s(12_999)), Ok(()));
        // Rate 0: no deadline.
        let mut off = FrameClock::new(0, Duration::from_secs(1));
        off.on_bytes(1, true, false, s(0));
        assert_eq!(off.check(s(100_000)), Ok(()));
    }

    #[test]
    fn admission_counts_handshakes_and_addresses() {
        let a = Admission::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let mut first = a.admit(ip, 2, Some(2)).unwrap();
        let second = a.admit(ip, 2, Some(2)).unwrap();
        assert_eq!(
            a.admit(other, 2, Some(2)).err(),
            Some(Refusal::Handshaking(2))
        );
        first.greeted();
        assert_eq!(a.handshaking(), 1);
        assert_eq!(a.admit(ip, 2, Some(2)).err(), Some(Refusal::PerIp(2)));
        let third = a.admit(other, 2, Some(2)).unwrap();
        drop((first, second, third));
        assert_eq!(a.handshaking(), 0);
        assert!(a.per_ip.lock().is_empty());
        // No per-address limit.
        let x: Vec<_> = (0..5).map(|_| a.admit(ip, 9, None).unwrap()).collect();
        assert_eq!(a.handshaking(), 5);
        drop(x);
    }
}
