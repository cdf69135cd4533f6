//! `p2prs`: run a peer-to-peer node from the command line, or the demo.
//!
//! See `docs/cli.md` for every subcommand, flag, stdin command and event.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
