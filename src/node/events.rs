//! The node's events, as a p2prs type: blocking, timed and non-blocking
//! receives, and iteration.

use super::Event;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// The events of a node ([`Node::events`](crate::Node::events)): messages
/// without a handler (such as `TEXT`) and ring changes, oldest first.
///
/// Buffering: the node keeps its events from the moment it starts, in one
/// queue of at most [`Config::events_capacity`](crate::Config::events_capacity)
/// (default 1024) events and [`Config::events_max_bytes`](crate::Config::events_max_bytes)
/// (default 64 MiB) of message data and bodies, that every `Events` handle of
/// the node shares (each event goes to one reader). When the queue is full
/// the oldest event is dropped
/// and counted in [`Node::events_dropped`](crate::Node::events_dropped), so a
/// program that never reads events does not grow the node's memory. Once the
/// node has shut down and the queue is drained, receives return
/// [`RecvError::Closed`] and iteration ends.
///
/// ```
/// use p2prs::{Event, Message, Node, RecvError};
/// use std::time::Duration;
///
/// let a = Node::builder().start()?;
/// let b = Node::builder().start()?;
/// b.send(a.local_addr(), Message::text("Hi!"))?;
/// let events = a.events();
/// match events.recv_timeout(Duration::from_secs(10)) {
///     Ok(Event::Message { message, .. }) => assert_eq!(message.as_text(), Some("Hi!")),
///     other => panic!("{other:?}"),
/// }
/// assert_eq!(events.try_recv().err(), Some(RecvError::Empty));
/// a.shutdown();
/// assert_eq!(events.recv().err(), Some(RecvError::Closed));
/// assert_eq!(events.iter().count(), 0);
/// # Ok::<(), p2prs::Error>(())
/// ```
#[derive(Clone)]
pub struct Events {
    rx: Receiver<Event>,
}

/// Why a receive from [`Events`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecvError {
    /// No event is queued now ([`Events::try_recv`]).
    Empty,
    /// No event came within the time allowed.
    Timeout,
    /// The node has shut down and every event was read.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvError::Empty => "no event is queued",
            RecvError::Timeout => "no event came in time",
            RecvError::Closed => "the node has shut down and every event was read",
        })
    }
}

impl std::error::Error for RecvError {}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.len())
            .finish()
    }
}

impl Events {
    pub(crate) fn new(rx: Receiver<Event>) -> Events {
        Events { rx }
    }

    /// Wait for the next event.
    pub fn recv(&self) -> Result<Event, RecvError> {
        self.rx.recv().map_err(|_| RecvError::Closed)
    }

    /// Wait at most `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvError> {
        self.rx.recv_timeout(timeout).map_err(timed)
    }

    /// Wait until `deadline` at most for the next event.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Event, RecvError> {
        self.rx.recv_deadline(deadline).map_err(timed)
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Result<Event, RecvError> {
        self.rx.try_recv().map_err(|e| match e {
            TryRecvError::Empty => RecvError::Empty,
            TryRecvError::Disconnected => RecvError::Closed,
        })
    }

    /// Every event, waiting for each; ends when the node has shut down.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.iter()
    }

    /// The events queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        self.rx.try_iter()
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

fn timed(e: RecvTimeoutError) -> RecvError {
    match e {
        RecvTimeoutError::Timeout => RecvError::Timeout,
        RecvTimeoutError::Disconnected => RecvError::Closed,
    }
}

impl IntoIterator for Events {
    type Item = Event;
    type IntoIter = crossbeam_channel::IntoIter<Event>;

    /// Every event, waiting for each; ends when the node has shut down.
    fn into_iter(self) -> Self::IntoIter {
        self.rx.into_iter()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = Event;
    type IntoIter = crossbeam_channel::Iter<'a, Event>;

    /// Every event, waiting for each; ends when the node has shut down.
    fn into_iter(self) -> Self::IntoIter {
        self.rx.iter()
    }
}

/// The sizes of the events in the queue, oldest first, and their sum: what
/// bounds the queue by `Config::events_max_bytes`. Readers take events from
/// the front without telling; [`QueuedBytes::taken_down_to`] catches up from
/// the queue's length (both are in the same order).
#[derive(Debug, Default)]
pub(crate) struct QueuedBytes {
    sizes: VecDeque<usize>,
    total: usize,
}

impl QueuedBytes {
    /// The bytes of the events counted as queued.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// The queue holds `len` events now: the older ones were taken.
    pub(crate) fn taken_down_to(&mut self, len: usize) {
        while self.sizes.len() > len {
            self.pop_oldest();
        }
    }

    /// The oldest event left the queue.
    pub(crate) fn pop_oldest(&mut self) {
        if let Some(s) = self.sizes.pop_front() {
            self.total -= s;
        }
    }

    /// An event of `size` bytes joined the queue.
    pub(crate) fn push(&mut self, size: usize) {
        self.sizes.push_back(size);
        self.total += size;
    }
}

/// About the bytes an event holds: a message's type, data and body (the
/// ring's events hold next to nothing).
pub(crate) fn size_of(e: &Event) -> usize {
    match e {
        Event::Message { message, .. } => message_size(message),
        _ => SMALL,
    }
}

/// What every event or message is counted at, at least.
const SMALL: usize = 64;

/// About the bytes a message holds: its type, data and body.
pub(crate) fn message_size(message: &crate::Message) -> usize {
    SMALL
        + message.kind().len()
        + value_size(message.data_value())
        + message.body().map_or(0, <[u8]>::len)
}

/// About the memory a JSON value holds (without recursion: a peer's data
/// may nest as deep as the parser allows).
fn value_size(v: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    let mut size = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        size += NODE;
        match v {
            Value::String(s) => size += s.len(),
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                for (k, v) in o {
                    size += NODE + k.len();
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    size
}
