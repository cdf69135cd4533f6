//! Plumbing shared by the examples: the logger, the command line and the exit
//! code. The p2p code of each example stays in the example itself.
//!
//! Every example includes this module with `mod common;` (a module in a
//! subdirectory is not built as an example of its own); not every example uses
//! every item.
#![allow(dead_code)]

use std::error::Error;
use std::process::exit;

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Log the library's warnings and errors to stderr (`RUST_LOG` overrides).
pub fn init_logger() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("p2prs=warn"))
        .init();
}

/// Print the error of a failed run as `example: error` and exit with status 1.
pub fn exit_on_error(example: &str, outcome: Result<()>) {
    if let Err(e) = outcome {
        eprintln!("{example}: {e}");
        exit(1);
    }
}

/// The arguments of this run, read by `parse` from the `--flag value` pairs.
/// `--help` prints `usage` and exits with status 0; an error from `parse`
/// prints it with `usage` and exits with status 2.
pub fn command_line<A>(
    usage: &str,
    parse: impl FnOnce(Flags) -> std::result::Result<A, String>,
) -> A {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "-h" || a == "--help") {
        println!("{usage}");
        exit(0);
    }
    parse(Flags(argv.into_iter())).unwrap_or_else(|e| {
        eprintln!("error: {e}\n{usage}");
        exit(2);
    })
}

/// The command line as `(flag, value)` pairs; the value is `None` for a
/// last flag without one (see [`needs`]).
pub struct Flags(std::vec::IntoIter<String>);

impl Iterator for Flags {
    type Item = (String, Option<String>);

    fn next(&mut self) -> Option<Self::Item> {
        let flag = self.0.next()?;
        Some((flag, self.0.next()))
    }
}

/// The value of a known `flag`, or why there is none.
pub fn needs(flag: &str, value: Option<String>) -> std::result::Result<String, String> {
    value.ok_or_else(|| format!("{flag} needs a value"))
}

/// The value of `--port`.
pub fn port(value: &str) -> std::result::Result<u16, String> {
    value.parse().map_err(|_| format!("bad port '{value}'"))
}

/// The error for a flag the example does not know.
pub fn unknown_option(flag: &str) -> String {
    format!("unknown option '{flag}'")
}

/// Which node a two-node example runs: A, B, or both in one process.
#[derive(Debug, PartialEq)]
pub enum Role {
    A,
    B,
    Both,
}

/// The command line of a two-node example (`text_message`, `add_request`).
pub struct RoleArgs {
    pub role: Role,
    pub host: String,
    /// `None` when not given: each role has its own default.
    pub port: Option<u16>,
    /// The addresses B joins through (A's address).
    pub join: Vec<String>,
}

impl RoleArgs {
    /// The arguments of this run of `example`; `--help` or a bad one exits here.
    pub fn from_command_line(example: &str) -> RoleArgs {
        let usage = format!(
            "usage: {example} [--role a|b|both] [--host H] [--port P] [--join HOST:PORT]
  --role both   (default) run A and B in this process
  --role a      run node A only (default port 4444)
  --role b      run node B only; needs --join with A's address"
        );
        command_line(&usage, RoleArgs::parse)
    }

    fn parse(flags: Flags) -> std::result::Result<RoleArgs, String> {
        let mut args = RoleArgs {
            role: Role::Both,
            host: "127.0.0.1".into(),
            port: None,
            join: Vec::new(),
        };
        for (flag, value) in flags {
            match flag.as_str() {
                "--role" => args.role = parse_role(&needs(&flag, value)?)?,
                "--host" => args.host = needs(&flag, value)?,
                "--port" => args.port = Some(port(&needs(&flag, value)?)?),
                "--join" => args.join.push(needs(&flag, value)?),
                _ => return Err(unknown_option(&flag)),
            }
        }
        if args.role == Role::B && args.join.is_empty() {
            return Err("--role b needs --join HOST:PORT (node A's address)".into());
        }
        Ok(args)
    }
}

fn parse_role(value: &str) -> std::result::Result<Role, String> {
    match value {
        "a" | "A" => Ok(Role::A),
        "b" | "B" => Ok(Role::B),
        "both" => Ok(Role::Both),
        other => Err(format!("--role must be a, b or both, not '{other}'")),
    }
}
