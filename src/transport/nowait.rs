//! Reads and writes of a socket that do not wait for bytes or for room,
//! whatever the socket's other users do: `recv`/`send` with
//! `MSG_DONTWAIT`, which leave the socket blocking for its other readers
//! and writers (setting the socket non-blocking would not). They may
//! still sleep on the socket's lock, which a write holds while the kernel
//! delivers its bytes (see `ReadState::poll_briefly`). Linux only;
//! elsewhere every call reports `WouldBlock` (a write, 0 bytes) and
//! callers block as they would have.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Whether calls here can succeed on this system.
pub(super) const SUPPORTED: bool = cfg!(target_os = "linux");

/// Read `stream` if bytes (or the end) are there, else fail at once with
/// `WouldBlock`.
#[cfg(target_os = "linux")]
pub(super) fn read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    rustix::net::recv(stream, buf, rustix::net::RecvFlags::DONTWAIT)
        .map(|(n, _)| n)
        .map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn read(_stream: &TcpStream, _buf: &mut [u8]) -> io::Result<usize> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// Write what of `bytes` the socket's send buffer takes now: the bytes
/// written (0 when it takes none, or on an error, which the caller's next
/// blocking write meets again).
#[cfg(target_os = "linux")]
pub(super) fn write(stream: &TcpStream, bytes: &[u8]) -> usize {
    let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
    rustix::net::send(stream, bytes, flags).unwrap_or(0)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn write(_stream: &TcpStream, _bytes: &[u8]) -> usize {
    0
}

/// Bytes waiting in `stream`'s receive queue (`FIONREAD`): a read of at
/// most that many finds them there and does not wait. `None` when the
/// look fails, and on systems other than Linux (where callers then read
/// as they would have).
#[cfg(target_os = "linux")]
pub(super) fn waiting(stream: &TcpStream) -> Option<usize> {
    let n = rustix::io::ioctl_fionread(stream).ok()?;
    Some(usize::try_from(n).unwrap_or(usize::MAX))
}

#[cfg(not(target_os = "linux"))]
pub(super) fn waiting(_stream: &TcpStream) -> Option<usize> {
    None
}

/// At most this many threads in the process poll in [`read_within`] at
/// once; the others block at once. A storm of handshakes (a node joining a
/// large ring, or a flood of connections) then costs no more CPU in looking
/// than a couple of busy threads.
const POLLERS: usize = 2;

static POLLING: AtomicUsize = AtomicUsize::new(0);

/// Try [`read`]s of `stream` for up to `window`, yielding the CPU in
/// between: the read's result once bytes (or the end, or an error) came,
/// `None` when the caller should block (the window passed, or [`POLLERS`]
/// threads poll already).
pub(super) fn read_within(
    stream: &TcpStream,
    buf: &mut [u8],
    window: Duration,
) -> Option<io::Result<usize>> {
    struct Polling;
    impl Drop for Polling {
        fn drop(&mut self) {
            POLLING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    if !SUPPORTED {
        return None;
    }
    if POLLING.fetch_add(1, Ordering::Relaxed) >= POLLERS {
        POLLING.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let _polling = Polling;
    let began = Instant::now();
    loop {
        match read(stream, buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            r => return Some(r),
        }
        if began.elapsed() >= window {
            return None;
        }
        std::thread::yield_now();
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn reads_and_writes_that_do_not_wait() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        let mut buf = [0u8; 8];
        // Nothing there: at once, WouldBlock.
        let e = read(&a, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(read_within(&a, &mut buf, Duration::ZERO).is_none());
        b.write_all(b"hi").unwrap();
        // It comes: the read within a long window returns it.
        let n = read_within(&a, &mut buf, Duration::from_secs(30)).and_then(|r| r.ok());
        match n {
            Some(n) => assert_eq!(&buf[..n], b"hi"),
            // Two other tests poll at this moment: a blocking read then.
            None => assert_eq!(std::io::Read::read(&mut &a, &mut buf).unwrap(), 2),
        }
        assert_eq!(write(&b, b"back"), 4);
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut &a, &mut got).unwrap();
        assert_eq!(got, b"back");
    }
}
