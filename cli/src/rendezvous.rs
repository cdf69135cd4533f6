//! `p2prs rendezvous`: run a rendezvous server for nodes behind NAT.
//! See `docs/nat-traversal.md`.

use crate::args::{
    flag_name, lex_error, non_empty, number, unexpected, unknown_flag, value, Command, Topic,
    UsageError,
};
use lexopt::prelude::*;
use lexopt::Parser;
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
    /// The network key (else from `P2PRS_NETWORK_KEY`).
    pub network_key: Option<String>,
}

impl Default for RendezvousOpts {
    fn default() -> Self {
        RendezvousOpts {
            host: "0.0.0.0".into(),
            port: DEFAULT_PORT,
            relay_rate_limit: None,
            relay_peer_cap: None,
            network_key: None,
        }
    }
}

/// The help text of `p2prs rendezvous`.
pub const HELP: &str = "\
p2prs rendezvous: run a rendezvous server for nodes behind NAT

Usage:
  p2prs rendezvous [--host H] [--port P] [--relay-rate-limit B] [--relay-peer-cap B]
                   [--network-key KEY]

Options:
      --host H               host or IP address to listen on (default 0.0.0.0)
  -p, --port P               port to listen on (default 9000)
      --relay-rate-limit B   bytes per second the relay forwards in all
                             (default 8388608; 0: unlimited)
      --relay-peer-cap B     bytes per second one node may send through the
                             relay (default 1048576; 0: unlimited)
      --network-key KEY      serve only nodes with this network key (default:
                             the P2PRS_NETWORK_KEY environment variable; none:
                             any node may register)
  -h, --help                 show this help

Nodes use it with 'p2prs node --rendezvous HOST:PORT'. It registers them,
tells each its public endpoint, introduces two nodes behind NAT to each other
for a hole punch, and relays their frames when punching fails. It runs until
it is killed. See docs/nat-traversal.md.";

/// Parse the flags after `p2prs rendezvous`: its options, or its help.
pub fn parse(p: &mut Parser) -> Result<Command, UsageError> {
    let mut opts = RendezvousOpts::default();
    while let Some(arg) = p.next().map_err(lex_error)? {
        let flag = flag_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(Topic::Rendezvous)),
            Long("host") => opts.host = non_empty(&flag, value(p)?)?,
            Short('p') | Long("port") => {
                opts.port = number(&flag, &value(p)?, "a port from 0 to 65535")?
            }
            Long("relay-rate-limit") => {
                opts.relay_rate_limit = Some(number(&flag, &value(p)?, BYTES_PER_SECOND)?)
            }
            Long("relay-peer-cap") => {
                opts.relay_peer_cap = Some(number(&flag, &value(p)?, BYTES_PER_SECOND)?)
            }
            Long("network-key") => opts.network_key = Some(non_empty(&flag, value(p)?)?),
            Value(v) => return unexpected(v),
            _ => return unknown_flag(&flag, "rendezvous"),
        }
    }
    Ok(Command::Rendezvous(opts))
}

const BYTES_PER_SECOND: &str = "bytes per second (0: unlimited)";

/// Run the rendezvous until the process is killed.
pub fn run(opts: &RendezvousOpts) -> ExitCode {
    let mut cfg = Config::default();
    if let Some(n) = opts.relay_rate_limit {
        cfg.relay_rate_limit = n;
    }
    if let Some(n) = opts.relay_peer_cap {
        cfg.relay_peer_cap = n;
    }
    cfg.network_key = crate::args::network_key(&opts.network_key).map(p2prs::NetworkKey::new);
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

    fn p(line: &str) -> Result<Command, UsageError> {
        parse(&mut Parser::from_args(line.split_whitespace()))
    }

    fn opts(line: &str) -> RendezvousOpts {
        match p(line) {
            Ok(Command::Rendezvous(opts)) => opts,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        assert_eq!(opts(""), RendezvousOpts::default());
        let o = opts("--host 10.0.0.1 --port=9100 --relay-peer-cap 0 --relay-rate-limit 5");
        assert_eq!(o.host, "10.0.0.1");
        assert_eq!(o.port, 9100);
        assert_eq!(o.relay_peer_cap, Some(0));
        assert_eq!(o.relay_rate_limit, Some(5));
        assert_eq!(p("-h"), Ok(Command::Help(Topic::Rendezvous)));
        assert_eq!(p("--port 1 --help"), Ok(Command::Help(Topic::Rendezvous)));
    }

    #[test]
    fn bad_flags_say_why() {
        assert!(p("--port x").unwrap_err().0.contains("port"));
        assert!(p("--port").unwrap_err().0.contains("needs a value"));
        assert!(p("--bogus").unwrap_err().0.contains("unknown option"));
    }
}
