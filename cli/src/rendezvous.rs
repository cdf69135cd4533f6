//! `p2prs rendezvous`: run a rendezvous server for nodes behind NAT.
//! See `docs/nat-traversal.md`.

use crate::args::UsageError;
use p2prs::{Config, Rendezvous};
use std::process::ExitCode;
use std::time::Duration;

/// The port a rendezvous listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 9000;

/// Flags of `p2prs rendezvous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousOpts {
    /// Host or IP address to listen on.
    pub host: String,
    /// Port to listen on.
    pub port: u16,
    /// Bytes per second the relay forwards in all (0: unlimited).
    pub relay_rate_limit: Option<u64>,
    /// Bytes per second one node may relay (0: unlimited).
    pub relay_peer_cap: Option<u64>,
    /// Print the help instead.
    pub help: bool,
}

impl Default for RendezvousOpts {
    fn default() -> Self {
        RendezvousOpts {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            relay_rate_limit: None,
            relay_peer_cap: None,
            help: false,
        }
    }
}

const HELP: &str = "\
p2prs rendezvous: run a rendezvous server for nodes behind NAT

Usage:
  p2prs rendezvous [--host H] [--port P] [--relay-rate-limit B] [--relay-peer-cap B]

Options:
      --host H               host or IP address to listen on (default 0.0.0.0)
  -p, --port P               port to listen on (default 9000)
      --relay-rate-limit B   bytes per second the relay forwards in all
                             (default 8388608; 0: unlimited)
      --relay-peer-cap B     bytes per second one node may send or receive
                             through the relay (default 1048576; 0: unlimited)
  -h, --help                 show this help

Nodes use it with 'p2prs node --rendezvous HOST:PORT'. It registers them,
tells each its public endpoint, introduces two nodes behind NAT to each other
for a hole punch, and relays their frames when punching fails. It runs until
it is killed. See docs/nat-traversal.md.";

fn usage<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Parse the flags after `p2prs rendezvous`.
pub fn parse(args: &[String]) -> Result<RendezvousOpts, UsageError> {
    let mut opts = RendezvousOpts::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, UsageError> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) if !v.trim().is_empty() => Ok(v),
                _ => usage(format!("{flag} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => opts.help = true,
            "--host" => opts.host = value()?,
            "-p" | "--port" => {
                let v = value()?;
                opts.port = v.parse().or_else(|_| {
                    usage(format!("{flag} expects a port from 0 to 65535, got '{v}'"))
                })?;
            }
            "--relay-rate-limit" | "--relay-peer-cap" => {
                let v = value()?;
                let n: u64 = v.parse().or_else(|_| {
                    usage(format!(
                        "{flag} expects bytes per second (0: unlimited), got '{v}'"
                    ))
                })?;
                if flag == "--relay-rate-limit" {
                    opts.relay_rate_limit = Some(n);
                } else {
                    opts.relay_peer_cap = Some(n);
                }
            }
            other => {
                return usage(format!(
                "unknown option '{other}' for 'p2prs rendezvous' (see 'p2prs rendezvous --help')"
            ))
            }
        }
    }
    Ok(opts)
}

/// Run the rendezvous until the process is killed.
pub fn run(opts: &RendezvousOpts) -> ExitCode {
    if opts.help {
        say!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let mut cfg = Config::default();
    if let Some(n) = opts.relay_rate_limit {
        cfg.relay_rate_limit = n;
    }
    if let Some(n) = opts.relay_peer_cap {
        cfg.relay_peer_cap = n;
    }
    let rv = match Rendezvous::start_with_config(&opts.host, opts.port, cfg) {
        Ok(rv) => rv,
        Err(e) => {
            eprintln!("p2prs: starting the rendezvous: {e}");
            return ExitCode::FAILURE;
        }
    };
    say!("rendezvous listening on {}", rv.local_addr());
    let mut last = rv.stats();
    loop {
        std::thread::sleep(Duration::from_secs(60));
        let now = rv.stats();
        if now != last {
            log::info!(
                "{} registered; {} introductions, {} frames ({} bytes) relayed, {} refused",
                now.registered,
                now.introductions,
                now.relayed_frames,
                now.relayed_bytes,
                now.refused_frames
            );
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<RendezvousOpts, UsageError> {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(p(""), Ok(RendezvousOpts::default()));
        let o = p("--host 10.0.0.1 --port=9100 --relay-peer-cap 0 --relay-rate-limit 5").unwrap();
        assert_eq!(o.host, "10.0.0.1");
        assert_eq!(o.port, 9100);
        assert_eq!(o.relay_peer_cap, Some(0));
        assert_eq!(o.relay_rate_limit, Some(5));
        assert!(p("-h").unwrap().help);
    }

    #[test]
    fn bad_flags_say_why() {
        assert!(p("--port x").unwrap_err().0.contains("port"));
        assert!(p("--port").unwrap_err().0.contains("needs a value"));
        assert!(p("--bogus").unwrap_err().0.contains("unknown option"));
    }
}
