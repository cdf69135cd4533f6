//! `p2prs`: run a peer-to-peer node from the command line, or the demo.
//!
//! See `docs/cli.md` for every subcommand, flag, stdin command and event.

/// `println!` that does not panic when standard output is a closed pipe
/// (`p2prs demo | head -1`): what cannot be written is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod args;
mod demo;
mod handlers;
mod help;
mod input;
mod node;
mod output;
mod rendezvous;
mod stats;
mod svg;
mod watchdog;

use args::{Command, UsageError};
use std::process::ExitCode;

/// Exit code of a bad command line.
const USAGE_EXIT: u8 = 2;

/// Parse the command line and run what it asks for.
fn main() -> ExitCode {
    // args_os: an argument that is not UTF-8 is a usage error, not a panic.
    match args::parse(std::env::args_os().skip(1)) {
        Ok(command) => run(command),
        Err(UsageError(msg)) => {
            eprintln!("p2prs: {msg}");
            ExitCode::from(USAGE_EXIT)
        }
    }
}

fn run(command: Command) -> ExitCode {
    match command {
        Command::Help(topic) => {
            say!("{}", help::text(topic));
            ExitCode::SUCCESS
        }
        Command::Version => {
            say!("p2prs {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Node(opts) => {
            // The node's own info logs (listening, joined, a TEXT received,
            // a peer joined or left) say what its events already print on
            // stdout; showing both would print each event twice in a
            // terminal. The rest (rendezvous, hole punching) stays at info.
            init_logger("p2prs=info,p2prs::node=warn");
            node::run(opts)
        }
        Command::Rendezvous(opts) => {
            init_logger("p2prs=info");
            rendezvous::run(&opts)
        }
        Command::Demo(opts) => {
            // The demo prints its own story; the library's per-message info
            // logs would drown it, so they show only with --verbose.
            init_logger(if opts.verbose {
                "p2prs=info"
            } else {
                "p2prs=warn"
            });
            demo::run(&opts)
        }
    }
}

/// Log to stderr with the `default` filter, unless RUST_LOG says otherwise.
fn init_logger(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
