//! One peer floods a node with messages for its pooled handlers while a good
//! peer makes requests: prints the good peer's latency and the process's
//! resident memory, to show the per-connection handler queue at work
//! (`Config::handler_queue_len`; see `docs/robustness.md`).
//!
//! ```sh
//! cargo run --release --example flood -- 5      # seconds of flood
//! cargo run --release --example flood -- 5 1000000   # and a handler_queue_len
//! ```

use p2prs::{Message, Node};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() -> Result<(), p2prs::Error> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let queue: Option<usize> = std::env::args().nth(2).and_then(|s| s.parse().ok());
    let server = Node::builder()
        .configure(|c| {
            if let Some(q) = queue {
                c.handler_queue_len = q;
            }
        })
        .start()?;
    println!("handler_queue_len {}", server.config().handler_queue_len);
    let handled = Arc::new(AtomicU64::new(0));
    let h = Arc::clone(&handled);
    // Each message costs its handler 50 µs of CPU: more than the flooder
    // takes to send one, so unread work piles up somewhere.
    server.add_handler("WORK", move |_req| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        h.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })?;
    server.add_handler("ADD", |req| {
        let n: i64 = req.message().data()?;
        req.respond(Message::new("ADD RESP", n + 1))?;
        Ok(())
    })?;
    let addr = server.local_addr();
    println!("before: RSS {:.1} MiB", rss_mib());

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooding = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || -> Result<(), p2prs::Error> {
            let flooder = Node::builder().start()?;
            let conn = flooder.connect(addr)?;
            let body = vec![0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                conn.send(Message::new("WORK", ()).with_body(body.clone()))?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    let good = Node::builder().start()?;
    let conn = good.connect(addr)?;
    let mut lat = Vec::new();
    let mut failed = 0;
    let mut peak = 0f64;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let t = Instant::now();
        match conn.request_timeout(Message::new("ADD", 1), Duration::from_secs(2)) {
            Ok(_) => lat.push(t.elapsed()),
            Err(_) => failed += 1,
        }
        peak = peak.max(rss_mib());
    }
    stop.store(true, Ordering::Relaxed);
    peak = peak.max(rss_mib());
    let _ = flooding.join();
    lat.sort_unstable();
    let at = |q: usize| {
        lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{secs} s of flood: {} messages of 1 KiB sent, {} handled; good peer: {} requests \
         answered, {failed} not within 2 s, median {:.2?}, p99 {:.2?}, max {:.2?}; \
         RSS peak {peak:.1} MiB, after {:.1} MiB",
        sent.load(Ordering::Relaxed),
        handled.load(Ordering::Relaxed),
        lat.len(),
        at(50),
        at(99),
        at(100),
        rss_mib()
    );
    Ok(())
}
