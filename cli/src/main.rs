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
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&argv) {
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
            init_logger("info");
            node::run(opts)
        }
        Command::Rendezvous(opts) => {
            init_logger("info");
            rendezvous::run(&opts)
        }
        Command::Demo(opts) => {
            // The demo prints its own story; the library's per-message info
            // logs would drown it, so they show only with --verbose.
            init_logger(if opts.verbose { "info" } else { "warn" });
            demo::run(&opts)
        }
    }
}

/// Log to stderr: p2prs at `level` unless RUST_LOG says otherwise.
fn init_logger(level: &str) {
    let default = format!("p2prs={level}");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
