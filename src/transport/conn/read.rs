//! The read side of a connection: the read loop (records -> frames), the
//! read state that a requester may hold to read its own answer (leader and
//! followers), the relay's loop, delivery of frames and refusal of bad input.

use super::*;

impl Conn {
    /// The peer closed its side: a frame cut short there is bad input, and
    /// the read ends.
    fn at_eof(&self, st: &mut ReadState) {
        self.eof.store(true, Ordering::Release);
        if let Err(e) = st.inbound.decoder.finish() {
            log::warn!("{}: {e}; closing", self.peer_addr());
        }
        st.ended = true;
    }

    /// The read state, if nobody reads the socket and a requester may
    /// (a `lent` one even when the connection's thread has frames waiting:
    /// it is that thread, see [`Conn::run_lent`]).
    /// A `lent` requester that finds another reading parks as
    /// [`Lead::lent_waiter`] (`slot`), to be woken when that one stops.
    pub(super) fn try_lead(&self, lent: bool, slot: &Arc<Slot>) -> Option<Box<ReadState>> {
        let mut g = self.lead.lock();
        if !g.open || (g.urgent && !lent) || g.delivering {
            return None;
        }
        let st = g.state.take();
        if st.is_none() && lent {
            g.lent_waiter = Some(Arc::clone(slot));
        }
        st
    }

    /// Read the socket for a requester until its answer is in (`slot`),
    /// its `deadline`, or a frame only the connection's thread may take.
    /// The hostile-load limits apply as on the connection's thread: the
    /// frame clock on every read, and a frame large enough to count in the
    /// memory budget goes back to the connection's thread.
    ///
    /// A handler running on the connection's thread itself (`lent`: see
    /// [`Conn::run_lent`]) keeps reading past frames that are not answers,
    /// up to [`LENT_DEFER_MAX`] of them, since that thread delivers them
    /// only once the handler returns. When it can read no further (the
    /// end, the connection closed, a large frame or too many frames for
    /// the connection's thread), the error its request fails with: that
    /// thread is the handler's own and reads nothing before it returns.
    pub(super) fn lead_for(
        &self,
        mut st: Box<ReadState>,
        slot: &Slot,
        deadline: Instant,
        lent: bool,
    ) -> Option<Error> {
        // Frames the decoder already holds come before any read (see
        // [`Lead`]): the connection's thread may have lent the state between
        // two frames of one read, and the answer this requester waits for,
        // or a request the peer waits on, may be among them.
        self.drain_answers(&mut st, lent);
        loop {
            let stop = if lent {
                st.ended
                    || st.charged
                    || st.deferred.len() >= LENT_DEFER_MAX
                    || st.inbound.held() > FREE_PER_CONN / 2
            } else {
                st.needs_conn_thread()
            };
            if slot.state.lock().answer.is_some() {
                break;
            }
            if stop || self.is_closed() {
                let blocked = lent.then(|| {
                    if st.ended || self.is_closed() {
                        self.closed_error()
                    } else {
                        Error::ResourceExhausted {
                            what: "frames held for the connection's thread".into(),
                            limit: LENT_DEFER_MAX,
                            context: format!(
                                "a request to {} from a handler on the thread of its \
                                 connection, which must deliver {} frames (or one large \
                                 one) first",
                                self.peer_addr(),
                                st.deferred.len()
                            ),
                        }
                    }
                });
                self.give_back(st);
                return blocked;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st.set_timeout(left.min(st.tick));
            // Answers of handlers on the connection's thread that wait in
            // the writer (corked) go first: what this requester waits for
            // may need them.
            self.uncork();
            let read = st.read(true);
            match read {
                Ok(0) => self.at_eof(&mut st),
                Ok(n) => {
                    self.touch();
                    self.reads.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = st.take_read(n) {
                        log::warn!("{}: {e}; closing the connection", self.peer_addr());
                        st.ended = true;
                    } else {
                        let frames = self.drain_answers(&mut st, lent);
                        note_bytes(&mut st, n, frames);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    if !self.is_closed() {
                        log::debug!("reading from {}: {e}", self.peer_addr());
                    }
                    st.ended = true;
                }
            }
            self.check_clock(&mut st);
        }
        self.give_back(st);
        None
    }

    /// A requester stops reading: the read state goes back, and the reading
    /// to the connection's thread (at once if it must read, else lazily) or
    /// to another requester still waiting.
    ///
    /// A handler's request parked on the connection's thread
    /// ([`Lead::lent_waiter`]) is woken first, urgent or not: that thread
    /// is in the handler, so it alone may take the frames left for it (it
    /// reads past them) and nobody else would wake it.
    pub(super) fn give_back(&self, st: Box<ReadState>) {
        let urgent = st.needs_conn_thread() || self.is_closed();
        let mut g = self.lead.lock();
        g.state = Some(st);
        g.last_exit = Some(Instant::now());
        let lent_woken = g.lent_waiter.take().is_some_and(|slot| slot.nudge());
        if urgent {
            g.urgent = true;
            self.lead_cv.notify_one();
        } else if !lent_woken && !self.nudge_follower() && g.long_sleep {
            self.lead_cv.notify_one();
        }
    }

    /// Run `f`, a handler on the connection's thread, with the socket lent
    /// to requesters meanwhile: a requester waiting on this connection
    /// reads its own answer while the thread is busy, and so does `f`
    /// itself if it makes a request over this connection (frames that are
    /// not answers then wait until `f` returns). Outside the connection's
    /// delivery of a frame, just runs `f`.
    pub(crate) fn run_lent<R>(&self, f: impl FnOnce() -> R) -> R {
        {
            let mut g = self.lead.lock();
            if !g.delivering || g.state.is_none() {
                drop(g);
                return f();
            }
            g.delivering = false;
            self.nudge_follower();
        }
        // Answers written so far, and `f`'s, wait in the writer for the end
        // of this read's deliveries (corked), as an inline handler's do, and
        // leave together. A requester that takes the read state meanwhile
        // (`f` itself, if it makes a request here) sends them before it
        // reads (see [`Conn::lead_for`]): what it waits for may need them.
        // `f` may take long after all: what is corked leaves soon anyway.
        self.uncork_soon();
        let before = LENT.replace(self.id);
        let r = f();
        LENT.set(before);
        let mut g = self.lead.lock();
        if g.state.is_none() {
            // A requester reads, maybe until its answer comes, which may
            // wait for what `f` answered: send it before waiting.
            MutexGuard::unlocked(&mut g, || self.uncork());
        }
        while g.state.is_none() {
            g.long_sleep = true;
            let _ = self.lead_cv.wait_for(&mut g, Duration::from_millis(10));
        }
        g.long_sleep = false;
        g.delivering = true;
        r
    }

    /// The connection's thread parks its read state while it delivers a
    /// frame (so that a handler may lend it: [`Conn::run_lent`]).
    pub(super) fn park_state(&self, st: Box<ReadState>) {
        let mut g = self.lead.lock();
        g.state = Some(st);
        g.delivering = true;
    }

    /// The read state back after a delivery.
    pub(super) fn unpark_state(&self) -> Box<ReadState> {
        let mut g = self.lead.lock();
        g.delivering = false;
        // Frames a requester left while the state was lent are this
        // thread's to deliver now.
        g.urgent = false;
        loop {
            if let Some(st) = g.state.take() {
                g.long_sleep = false;
                return st;
            }
            g.long_sleep = true;
            let _ = self.lead_cv.wait_for(&mut g, Duration::from_millis(10));
        }
    }

    /// Nudge one requester still waiting for its answer to take over the
    /// reading; false if there is none.
    pub(super) fn nudge_follower(&self) -> bool {
        self.pending.lock().values().any(|p| match p {
            Pending::Wait(slot) => slot.nudge(),
            Pending::Forward { .. } => false,
        })
    }

    /// Close the connection if a frame under way is too slow.
    pub(super) fn check_clock(&self, st: &mut ReadState) {
        if !st.clock.running() {
            return;
        }
        if let Err((got, window)) = st.clock.check(Instant::now()) {
            log::warn!(
                "{}: a frame under way brought {got} bytes in {window:?}, less than \
                 the minimum of {} bytes/s; closing the connection",
                self.peer_addr(),
                st.min_frame_rate
            );
            st.ended = true;
        }
    }

    /// Complete every answer the decoder holds; stop at the first frame
    /// that is not one and keep it for the connection's thread. Returns the
    /// frames taken.
    pub(super) fn drain_answers(&self, st: &mut ReadState, lent: bool) -> usize {
        let mut n = 0;
        loop {
            match st.inbound.decoder.next_frame() {
                Ok(Some(frame)) => {
                    n += 1;
                    if matches!(frame.kind, Kind::Response | Kind::Error) {
                        if !self.complete(frame) {
                            log::debug!("{}: answer to an unknown request", self.peer_addr());
                        }
                    } else {
                        st.deferred.push_back(frame);
                        if !lent || st.deferred.len() >= LENT_DEFER_MAX {
                            return n;
                        }
                    }
                }
                Ok(None) => return n,
                Err(e) => {
                    self.refuse(e);
                    st.ended = true;
                    return n;
                }
            }
        }
    }

    /// Wait for room in the memory budget before reading more of a large
    /// frame; after `frame_grace` without room, close the connection that
    /// holds the most. Returns false when this connection is to stop.
    pub(super) fn wait_for_memory(&self, inbound: &Inbound, limits: &ReadLimits) -> bool {
        let memory = limits.memory;
        let held = inbound.held();
        let deadline = Instant::now() + limits.frame_grace;
        if memory.wait_room(self.id, held, deadline, || self.is_closed()) {
            return true;
        }
        if self.is_closed() {
            return false;
        }
        if let Some((largest, bytes)) = memory.largest() {
            log::warn!(
                "the memory budget for partial frames ({} bytes) has been spent for {:?}; \
                 closing the connection holding the most, {} ({bytes} bytes)",
                memory.limit(),
                limits.frame_grace,
                largest.peer_addr()
            );
            largest.close();
            return largest.id != self.id;
        }
        true
    }

    /// The read loop: decode frames and hand them to `sink` until the
    /// connection ends. `inbound` may hold bytes read after the handshake.
    ///
    /// The socket is read by this thread, or, while this thread leaves it
    /// to them, by requesters waiting for answers (see [`Conn::request`]):
    /// after an answer to a local requester, this thread waits for
    /// [`LAZY_RETURN`] before it reads again, and a requester that comes
    /// meanwhile reads its own answer. Frames other than answers are always
    /// delivered here.
    pub(crate) fn read_loop(
        self: &Arc<Conn>,
        stream: Arc<TcpStream>,
        inbound: Inbound,
        sink: &dyn FrameSink,
        limits: &ReadLimits,
    ) {
        let _reading = Reading::begin(self);
        let idle = limits.idle;
        let tick = (idle.min(limits.ring_idle) / 3)
            .min(limits.frame_grace / 2)
            .clamp(Duration::from_millis(50), Duration::from_millis(500));
        // While answers wait in the backlog, look at it more often.
        let backlog_tick = Duration::from_millis(10);
        let mut fast = false;
        let _ = stream.set_read_timeout(Some(tick));
        let st = Box::new(ReadState {
            stream: Arc::clone(&stream),
            inbound,
            buf: vec![0u8; READ_FIRST],
            clock: FrameClock::new(limits.min_frame_rate, limits.frame_grace),
            charged: false,
            timeout: tick,
            tick,
            deferred: VecDeque::new(),
            ended: false,
            min_frame_rate: limits.min_frame_rate,
            direct: None,
            // A connection is opened for a request or a message, mostly:
            // its first read looks before it sleeps (the dialer sends its
            // first frame as soon as its handshake is done), on either end.
            poll: PollScore::FRESH,
            sent_seen: u64::MAX,
            writing: Arc::clone(&self.writing_since),
            budget_checked: false,
        });
        self.lead.lock().open = true;
        let (mut st, ok, _, _) = self.drain_tcp(st, sink);
        st.ended = !ok;
        st.clock
            .on_bytes(0, st.inbound.in_frame(), false, Instant::now());
        let mut mine = Some(st);
        if self.outbound && !st_needs_thread(&mine) {
            // The request it was opened for reads its own answer (with no
            // hand-over, and no wake of this thread); this thread reads
            // again after the lazy return if no requester came.
            if let Some(st) = mine.take() {
                self.step_down(st);
            }
        }
        'lead: loop {
            let mut st = match mine.take() {
                Some(st) => st,
                None => match self.wait_lead(tick, backlog_tick, idle, limits, &mut fast) {
                    Some(st) => st,
                    None => break 'lead,
                },
            };
            st.set_timeout(if fast { backlog_tick } else { tick });
            loop {
                if st.ended || self.is_closed() {
                    mine = Some(st);
                    break 'lead;
                }
                // Frames a requester read and left to this thread.
                let (back, good, _, waits) = self.drain_tcp(st, sink);
                st = back;
                if !good {
                    st.ended = true;
                    continue;
                }
                let held = st.inbound.held();
                if st.charged || held > FREE_PER_CONN {
                    limits.memory.set(self, held);
                    st.charged = held > FREE_PER_CONN;
                }
                let above_half = held > FREE_PER_CONN / 2;
                if !above_half && waits > 0 && !st.needs_conn_thread() {
                    // A local requester got its answer: leave the socket to
                    // it (or another) for its next request.
                    self.step_down(st);
                    continue 'lead;
                }
                // A read that could take the connection past its free
                // allowance waits for room in the budget first (requesters,
                // who do not, read less: `read_most`).
                if above_half || held + st.buf.len() > FREE_PER_CONN {
                    let before = Instant::now();
                    if !self.wait_for_memory(&st.inbound, limits) {
                        st.ended = true;
                        continue;
                    }
                    if before.elapsed() > Duration::from_millis(1) {
                        st.clock.restart(Instant::now());
                    }
                    st.budget_checked = true;
                }
                // Poll first only if this end has written since its last
                // read: an answer or a request is likely to come back.
                let sent = self.sent.load(Ordering::Relaxed);
                // The rest of a large frame under way is expected too.
                let expect = std::mem::replace(&mut st.sent_seen, sent) != sent
                    || st.inbound.large_frame_under_way();
                let read = st.read(expect);
                match read {
                    Ok(0) => {
                        self.at_eof(&mut st);
                        continue;
                    }
                    Ok(n) => {
                        self.touch();
                        self.reads.fetch_add(1, Ordering::Relaxed);
                        if fast && !self.push_backlog() {
                            fast = false;
                            st.set_timeout(tick);
                        }
                        if let Err(e) = st.take_read(n) {
                            log::warn!("{}: {e}; closing the connection", self.peer_addr());
                            st.ended = true;
                            continue;
                        }
                        let (back, good, frames, w) = self.drain_tcp(st, sink);
                        st = back;
                        st.ended = !good;
                        note_bytes(&mut st, n, frames);
                        if w > 0 && good && !st.needs_conn_thread() {
                            self.check_clock(&mut st);
                            if !st.ended {
                                self.step_down(st);
                                continue 'lead;
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        let left = self.push_backlog();
                        if left != fast {
                            fast = left;
                            st.set_timeout(if fast { backlog_tick } else { tick });
                        }
                        self.expire_forwards(limits.forward_timeout);
                        st.quiet();
                        self.writer_quiet();
                        if self.idle_expired_with(idle, limits.ring_idle, true) {
                            log::debug!("closing idle connection to {}", self.peer_addr());
                            st.ended = true;
                            continue;
                        }
                        self.keepalive(idle);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if !self.is_closed() {
                            log::debug!("reading from {}: {e}", self.peer_addr());
                        }
                        st.ended = true;
                        continue;
                    }
                }
                self.check_clock(&mut st);
            }
        }
        // A requester still reading gives the state back at once: the
        // socket is shut down.
        let st = match mine {
            Some(st) => st,
            None => self.reclaim(),
        };
        self.lead.lock().open = false;
        drop(st);
        limits.memory.set(self, 0);
        if self.refusal_sent.load(Ordering::Acquire) {
            self.linger(&stream);
        }
        self.close();
        self.fail_pending();
        sink.on_close(self);
    }

    /// This thread stops reading after an answer to a local requester: a
    /// requester still waiting reads next, else any that comes within
    /// [`LAZY_RETURN`].
    pub(super) fn step_down(&self, st: Box<ReadState>) {
        let mut g = self.lead.lock();
        g.state = Some(st);
        g.urgent = false;
        g.last_exit = Some(Instant::now());
        self.nudge_follower();
    }

    /// Wait until this thread is to read again: a requester left frames or
    /// the end for it, or nobody has read for [`LAZY_RETURN`]. Meanwhile
    /// it does the read loop's periodic work. `None` once the connection
    /// is closed while a requester holds the read state.
    pub(super) fn wait_lead(
        &self,
        tick: Duration,
        backlog_tick: Duration,
        idle: Duration,
        limits: &ReadLimits,
        fast: &mut bool,
    ) -> Option<Box<ReadState>> {
        let mut last_work = Instant::now();
        // Looks in a row that found requesters still reading.
        let mut rechecks = 0;
        let mut g = self.lead.lock();
        loop {
            if self.is_closed() {
                return g.state.take();
            }
            let since = g.last_exit.map(|t| t.elapsed());
            let lazy_over = since.is_none_or(|s| s >= LAZY_RETURN);
            if g.state.is_some() && (g.urgent || lazy_over) {
                g.urgent = false;
                g.last_exit = None;
                return g.state.take();
            }
            let period = if *fast { backlog_tick } else { tick };
            let wait = if lazy_over {
                period
            } else {
                lazy_wait(since.unwrap_or_default(), rechecks)
            };
            // Only a sleep past the lazy return is cut short by a requester
            // that stops reading (see [`Conn::give_back`]): while requests
            // flow, nobody wakes this thread.
            g.long_sleep = lazy_over;
            let timed_out = self.lead_cv.wait_for(&mut g, wait).timed_out();
            g.long_sleep = false;
            if timed_out && !lazy_over {
                rechecks += 1;
            }
            if last_work.elapsed() >= period {
                last_work = Instant::now();
                MutexGuard::unlocked(&mut g, || {
                    *fast = self.push_backlog();
                    self.expire_forwards(limits.forward_timeout);
                    self.keepalive(idle);
                });
            }
        }
    }

    /// The read state back from the requester that holds it, once the
    /// connection is closed (its read then ends at once).
    pub(super) fn reclaim(&self) -> Box<ReadState> {
        let mut g = self.lead.lock();
        loop {
            if let Some(st) = g.state.take() {
                return st;
            }
            let _ = self.lead_cv.wait_for(&mut g, Duration::from_millis(10));
        }
    }

    /// After a refusal notice: end our side and read (and discard) what the
    /// peer still sends, for a moment, so that closing does not reset the
    /// connection and throw the notice away before the peer reads it.
    pub(super) fn linger(&self, stream: &TcpStream) {
        let _ = stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        // On the heap: a buffer on the stack would make the read loop's
        // frame (this is inlined into it) 16 KiB deeper, and every
        // connection thread touch those pages for a path it seldom takes.
        let mut sink = vec![0u8; 16 * 1024];
        while Instant::now() < deadline {
            let _ = stream.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ));
            match (&*stream).read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The loop of a relayed connection: frames decoded by the rendezvous
    /// client arrive on `inbox`; it ends on close, when the rendezvous link
    /// goes, or when idle, and then fails what is pending.
    pub(crate) fn relay_loop(
        self: &Arc<Conn>,
        inbox: Receiver<Vec<u8>>,
        stop: Receiver<()>,
        mut inbound: Inbound,
        sink: &dyn FrameSink,
        idle: Duration,
    ) {
        let _reading = Reading::begin(self);
        let tick = (idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut ok = self.drain(&mut inbound.decoder, sink).0;
        while ok && !self.is_closed() {
            select! {
                recv(inbox) -> bytes => match bytes {
                    Ok(bytes) => {
                        self.touch();
                        if let Err(e) = inbound.push(&bytes) {
                            log::warn!("{} (relayed): {e}; closing the connection", self.peer_addr());
                            break;
                        }
                        ok = self.drain(&mut inbound.decoder, sink).0;
                    }
                    Err(_) => break,
                },
                recv(stop) -> _ => break,
                default(tick) => {
                    let via_gone = self.relay_target().is_none_or(|(via, _)| via.is_closed());
                    if via_gone || self.idle_expired(idle, false) {
                        break;
                    }
                }
            }
        }
        self.close();
        self.fail_pending();
        sink.on_close(self);
    }

    /// Deliver one frame; returns whether it answered a local requester.
    pub(super) fn deliver(self: &Arc<Conn>, frame: Frame, sink: &dyn FrameSink) -> bool {
        if frame.kind == Kind::Message && frame.msg_type == REFUSED_TYPE {
            let code = frame
                .data
                .get("code")
                .and_then(|v| v.as_str())
                .unwrap_or("failed");
            let why = frame
                .data
                .get("message")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            let message = format!(
                "{} refused this node's bytes and closed the connection: {why}",
                self.peer_addr()
            );
            log::warn!("{message}");
            *self.refused.lock() = Some((code.into(), message));
            return false;
        }
        match frame.kind {
            Kind::Response | Kind::Error => match self.complete_to(frame) {
                Some(local) => local,
                None => {
                    log::debug!("{}: answer to an unknown request", self.peer_addr());
                    false
                }
            },
            Kind::Message | Kind::Request => {
                sink.on_frame(self, frame);
                false
            }
        }
    }

    /// The connection's thread delivers the frames a requester left to it,
    /// then every complete frame: answers at once, other frames with the
    /// read state parked (see [`Conn::run_lent`]). Returns the state,
    /// whether the connection may go on, the frames decoded, and how many
    /// answered local requesters.
    pub(super) fn drain_tcp(
        self: &Arc<Conn>,
        st: Box<ReadState>,
        sink: &dyn FrameSink,
    ) -> (Box<ReadState>, bool, usize, usize) {
        let outer = CORK.replace(self.id);
        let r = self.drain_corked(st, sink);
        CORK.set(outer);
        self.uncork();
        r
    }

    pub(super) fn drain_corked(
        self: &Arc<Conn>,
        mut st: Box<ReadState>,
        sink: &dyn FrameSink,
    ) -> (Box<ReadState>, bool, usize, usize) {
        let (mut n, mut waits) = (0, 0);
        loop {
            let frame = match st.deferred.pop_front() {
                Some(frame) => frame,
                None => match st.inbound.decoder.next_frame() {
                    Ok(Some(frame)) => {
                        n += 1;
                        frame
                    }
                    Ok(None) => return (st, true, n, waits),
                    Err(e) => {
                        self.refuse(e);
                        return (st, false, n, waits);
                    }
                },
            };
            if matches!(frame.kind, Kind::Response | Kind::Error) {
                waits += usize::from(self.deliver(frame, sink));
                continue;
            }
            self.note_user(&frame);
            self.park_state(st);
            self.deliver(frame, sink);
            st = self.unpark_state();
        }
    }

    /// Deliver every complete frame; returns whether the connection may go
    /// on, how many frames were delivered, and how many of them answered
    /// local requesters.
    pub(super) fn drain(
        self: &Arc<Conn>,
        decoder: &mut Decoder,
        sink: &dyn FrameSink,
    ) -> (bool, usize, usize) {
        let (mut n, mut waits) = (0, 0);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    n += 1;
                    self.note_user(&frame);
                    waits += usize::from(self.deliver(frame, sink));
                }
                Ok(None) => return (true, n, waits),
                Err(e) => {
                    self.refuse(e);
                    return (false, n, waits);
                }
            }
        }
    }

    /// Bad input: tell the sender why before the connection closes, so that
    /// its requests fail with the reason rather than a bare closed
    /// connection.
    pub(super) fn refuse(&self, e: wire::WireError) {
        log::warn!("{}: {e}; closing the connection", self.peer_addr());
        let code = match e {
            wire::WireError::FrameTooLarge { .. } | wire::WireError::HeaderTooLarge { .. } => {
                "frame_too_large"
            }
            _ => "protocol_error",
        };
        let notice = Frame::new(
            Kind::Message,
            REFUSED_TYPE,
            serde_json::json!({ "code": code, "message": e.to_string() }),
        );
        if self.send_bounded(&notice).is_ok() {
            self.refusal_sent.store(true, Ordering::Release);
        }
    }
}

/// How long the connection's thread sleeps before it looks again whether
/// requesters still read, `since` the last one stopped, after `rechecks`
/// looks in a row that found them reading: until [`LAZY_RETURN`] has passed
/// at first, then ever longer, up to [`LAZY_RECHECK_MAX`]. Each look wakes
/// the thread on a CPU that a requester or the peer polls on, which cost
/// one round trip in about 60 some 30 µs when it looked every 500 µs.
pub(super) fn lazy_wait(since: Duration, rechecks: u32) -> Duration {
    let target = LAZY_RETURN
        .saturating_mul(1 << rechecks.min(8))
        .min(LAZY_RECHECK_MAX)
        .max(LAZY_RETURN);
    target.saturating_sub(since).max(Duration::from_micros(50))
}

/// Whether the read state `st` holds must stay with the connection's
/// thread (see [`ReadState::needs_conn_thread`]).
fn st_needs_thread(st: &Option<Box<ReadState>>) -> bool {
    st.as_ref().is_none_or(|st| st.needs_conn_thread())
}

/// `n` bytes read brought `frames` complete frames: the frame clock learns
/// it (reading the time only while a frame is under way).
fn note_bytes(st: &mut ReadState, n: usize, frames: usize) {
    if st.inbound.in_frame() {
        st.clock.on_bytes(n, true, frames > 0, Instant::now());
    } else {
        st.clock.between_frames();
    }
}

/// This thread reads a connection's socket until dropped (see
/// `Conn::reader`): the thread may go on to serve another connection (a
/// spare, see `Threads`), where it is no reader of this one.
struct Reading<'a>(&'a Conn);

impl<'a> Reading<'a> {
    fn begin(conn: &'a Conn) -> Reading<'a> {
        *conn.reader.lock() = Some(std::thread::current().id());
        Reading(conn)
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut r = self.0.reader.lock();
        if *r == Some(std::thread::current().id()) {
            *r = None;
        }
    }
}
