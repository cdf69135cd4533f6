//! Outbound connections counted by what they were opened for: the thread
//! that dials names its purpose ([`purpose`]), and [`Transport::dial`]
//! counts each connection it opens (one handshake at each end) under the
//! purpose its thread names. Process-wide, for the scale example's figures
//! (`p2prs::testing::dials`); a relaxed atomic add per dial.
//!
//! [`Transport::dial`]: super::Transport::dial

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a thread opens connections for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Anything not named below: user requests and messages, answers.
    Other,
    /// Routing a request by ID (the lookup and the owner's connection).
    Route,
    /// `join_network`: the first hop, the lookup, the claim, the notify.
    Join,
    /// A stabilizer round: stabilize, notify, the predecessor's ping.
    Stabilize,
    /// A finger refresh's lookup, at a node with no member list (it has
    /// heard no size news since it joined).
    Finger,
    /// The same, at a node whose member list is behind the root's count.
    FingerStale,
    /// The same, at a node whose member list is the root's count (only
    /// members found dead are looked up).
    FingerCurrent,
    /// Asking a peer to stabilize now.
    Poke,
    /// Asking the root to count again.
    Recount,
    /// The root's count of the ring.
    Census,
    /// Fetching a member list.
    Members,
    /// Sending or forwarding a broadcast (the size news, user broadcasts).
    Broadcast,
}

const NAMES: [&str; 12] = [
    "other",
    "route",
    "join",
    "stabilize",
    "finger (no list)",
    "finger (list behind)",
    "finger (list current)",
    "poke",
    "recount",
    "census",
    "members",
    "broadcast",
];

static DIALS: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];

thread_local! {
    static PURPOSE: Cell<Purpose> = const { Cell::new(Purpose::Other) };
}

/// Restores the thread's previous purpose when dropped.
#[must_use]
#[derive(Debug)]
pub(crate) struct PurposeGuard(Purpose);

impl Drop for PurposeGuard {
    fn drop(&mut self) {
        PURPOSE.with(|p| p.set(self.0));
    }
}

/// Count this thread's dials under `p` until the guard drops.
pub(crate) fn purpose(p: Purpose) -> PurposeGuard {
    PurposeGuard(PURPOSE.with(|c| c.replace(p)))
}

/// One connection dialled, under this thread's purpose.
pub(super) fn count_dial() {
    let p = PURPOSE.with(Cell::get);
    DIALS[p as usize].fetch_add(1, Ordering::Relaxed);
}

/// Connections dialled so far in this process, by purpose.
#[cfg_attr(not(feature = "unstable-testing"), allow(dead_code))]
pub(crate) fn dials() -> Vec<(&'static str, u64)> {
    NAMES
        .iter()
        .zip(&DIALS)
        .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        let before = dials();
        {
            let _a = purpose(Purpose::Stabilize);
            {
                let _b = purpose(Purpose::Finger);
                count_dial();
            }
            count_dial();
        }
        let after = dials();
        let grew = |name: &str| {
            let at = |v: &[(&str, u64)]| v.iter().find(|(n, _)| *n == name).map_or(0, |x| x.1);
            at(&after) - at(&before)
        };
        assert!(grew("finger (no list)") >= 1);
        assert!(grew("stabilize") >= 1);
        assert_eq!(PURPOSE.with(Cell::get), Purpose::Other);
    }
}
