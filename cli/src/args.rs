//! The command line: `p2prs SUBCOMMAND [FLAGS]`, split into flags and values
//! by `lexopt`.
//!
//! Pure code: it turns a list of arguments into a [`Command`] or a
//! [`UsageError`] that says what is wrong and how to fix it.

use lexopt::prelude::*;
use lexopt::{Arg, Parser};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The largest ring the demo starts in one process.
pub const MAX_DEMO_NODES: usize = 256;

/// A bad command line. The CLI prints it to stderr and exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Which help text to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `p2prs --help`.
    Main,
    /// `p2prs node --help`.
    Node,
    /// `p2prs demo --help`.
    Demo,
    /// `p2prs rendezvous --help`.
    Rendezvous,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print a help text.
    Help(Topic),
    /// Print the version.
    Version,
    /// Run one node driven by stdin.
    Node(NodeOpts),
    /// Run the demo ring.
    Demo(DemoOpts),
    /// Run a rendezvous server (see `crate::rendezvous`).
    Rendezvous(crate::rendezvous::RendezvousOpts),
}

/// Flags of `p2prs node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOpts {
    /// Host or IP address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Addresses to join through, tried in order.
    pub join: Vec<String>,
    /// The node ID to ask for.
    pub id: Option<u64>,
    /// One JSON object per output line.
    pub json: bool,
    /// The rendezvous server to keep a link to (NAT traversal).
    pub rendezvous: Option<String>,
    /// The identity file (created on the first start).
    pub identity: Option<PathBuf>,
    /// The network key (else from `P2PRS_NETWORK_KEY`).
    pub network_key: Option<String>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            host: "127.0.0.1".into(),
            port: 0,
            join: Vec::new(),
            id: None,
            json: false,
            rendezvous: None,
            identity: None,
            network_key: None,
        }
    }
}

/// The network key: the flag's value, else the `P2PRS_NETWORK_KEY`
/// environment variable (which `ps` does not show), else none.
pub fn network_key(flag: &Option<String>) -> Option<String> {
    flag.clone()
        .or_else(|| std::env::var("P2PRS_NETWORK_KEY").ok())
        .filter(|k| !k.is_empty())
}

/// Flags of `p2prs demo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOpts {
    /// How many nodes the ring has.
    pub nodes: usize,
    /// How many TEXT messages to send.
    pub messages: usize,
    /// How many ADD requests (and lookups) to make.
    pub requests: usize,
    /// Seed of the random choices (default: from the clock).
    pub seed: Option<u64>,
    /// Where to write a picture of the ring.
    pub svg: Option<PathBuf>,
    /// Show the library's info logs too.
    pub verbose: bool,
}

impl Default for DemoOpts {
    fn default() -> Self {
        DemoOpts {
            nodes: 16,
            messages: 100,
            requests: 200,
            seed: None,
            svg: None,
            verbose: false,
        }
    }
}

/// Parse the arguments after the program name.
///
/// Arguments are taken as `OsString`s, so one that is not valid UTF-8 is a
/// [`UsageError`] that says so, never a panic.
pub fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    let mut p = Parser::from_args(args);
    let first = match p.next().map_err(lex_error)? {
        None => {
            return usage("missing a subcommand: try 'p2prs demo', 'p2prs node' or 'p2prs --help'")
        }
        Some(arg) => arg,
    };
    match first {
        Short('h') | Long("help") => Ok(Command::Help(Topic::Main)),
        Short('V') | Long("version") => Ok(Command::Version),
        Value(sub) => match utf8(sub)?.as_str() {
            "help" => help_topic(&mut p),
            "node" => parse_node(&mut p),
            "demo" => parse_demo(&mut p),
            "rendezvous" => crate::rendezvous::parse(&mut p),
            other => usage(format!(
                "unknown subcommand '{other}': the subcommands are 'node', 'demo' and 'rendezvous' (see 'p2prs --help')"
            )),
        },
        flag => usage(format!(
            "unknown option '{}' (see 'p2prs --help')",
            flag_name(&flag)
        )),
    }
}

fn help_topic(p: &mut Parser) -> Result<Command, UsageError> {
    let topic = match p.next().map_err(lex_error)? {
        None => return Ok(Command::Help(Topic::Main)),
        Some(Value(v)) => utf8(v)?,
        Some(flag) => flag_name(&flag),
    };
    match topic.as_str() {
        "node" => Ok(Command::Help(Topic::Node)),
        "demo" => Ok(Command::Help(Topic::Demo)),
        "rendezvous" => Ok(Command::Help(Topic::Rendezvous)),
        other => usage(format!(
            "no help for '{other}': try 'p2prs help node', 'p2prs help demo' or 'p2prs help rendezvous'"
        )),
    }
}

fn parse_node(p: &mut Parser) -> Result<Command, UsageError> {
    let mut opts = NodeOpts::default();
    while let Some(arg) = p.next().map_err(lex_error)? {
        let flag = flag_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(Topic::Node)),
            Long("host") => opts.host = non_empty(&flag, value(p)?)?,
            Short('p') | Long("port") => {
                opts.port = number(&flag, &value(p)?, "a port from 0 to 65535")?
            }
            Short('j') | Long("join") => opts.join.push(address(&flag, value(p)?)?),
            Long("id") => opts.id = Some(number(&flag, &value(p)?, "a node ID (a whole number)")?),
            Long("json") => opts.json = true,
            Long("rendezvous") => opts.rendezvous = Some(address(&flag, value(p)?)?),
            Long("identity") => opts.identity = Some(PathBuf::from(value(p)?)),
            Long("network-key") => opts.network_key = Some(non_empty(&flag, value(p)?)?),
            Value(v) => return unexpected(v),
            _ => return unknown_flag(&flag, "node"),
        }
    }
    Ok(Command::Node(opts))
}

fn parse_demo(p: &mut Parser) -> Result<Command, UsageError> {
    let mut opts = DemoOpts::default();
    while let Some(arg) = p.next().map_err(lex_error)? {
        let flag = flag_name(&arg);
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(Topic::Demo)),
            Short('n') | Long("nodes") => opts.nodes = node_count(&flag, &value(p)?)?,
            Long("messages") => opts.messages = number(&flag, &value(p)?, "a count")?,
            Long("requests") => opts.requests = number(&flag, &value(p)?, "a count")?,
            Long("seed") => opts.seed = Some(number(&flag, &value(p)?, "a whole number")?),
            Long("svg") => opts.svg = Some(PathBuf::from(non_empty(&flag, value(p)?)?)),
            Short('v') | Long("verbose") => opts.verbose = true,
            Value(v) => return unexpected(v),
            _ => return unknown_flag(&flag, "demo"),
        }
    }
    Ok(Command::Demo(opts))
}

/// A flag as the user wrote it: `-p` or `--port`.
pub fn flag_name(arg: &Arg<'_>) -> String {
    match arg {
        Short(c) => format!("-{c}"),
        Long(name) => format!("--{name}"),
        Value(v) => v.to_string_lossy().into_owned(),
    }
}

/// The value of the flag just read: after `=`, or the next argument.
pub fn value(p: &mut Parser) -> Result<String, UsageError> {
    utf8(p.value().map_err(lex_error)?)
}

/// An argument as a `String`, or a usage error naming it if it is not UTF-8.
fn utf8(arg: OsString) -> Result<String, UsageError> {
    arg.into_string().map_err(|bad| not_utf8(&bad))
}

fn not_utf8(bad: &OsStr) -> UsageError {
    UsageError(format!(
        "argument '{}' is not valid UTF-8 (shown with U+FFFD for the bytes that are not); \
         p2prs takes its arguments as UTF-8 text",
        bad.to_string_lossy()
    ))
}

/// An argument that is not a flag, where only flags are expected.
pub fn unexpected<T>(arg: OsString) -> Result<T, UsageError> {
    Err(not_a_flag(&arg))
}

fn not_a_flag(arg: &OsStr) -> UsageError {
    if arg.to_str().is_none() {
        return not_utf8(arg);
    }
    UsageError(format!(
        "unexpected argument '{}' (flags start with '--')",
        arg.to_string_lossy()
    ))
}

/// The parser's own errors, said the way the rest of the command line says them.
pub fn lex_error(e: lexopt::Error) -> UsageError {
    match e {
        lexopt::Error::NonUnicodeValue(bad) => not_utf8(&bad),
        lexopt::Error::UnexpectedArgument(arg) => not_a_flag(&arg),
        lexopt::Error::MissingValue { option: Some(flag) } => {
            UsageError(format!("{flag} needs a value"))
        }
        lexopt::Error::UnexpectedValue { option, value } => UsageError(format!(
            "{option} takes no value (got '{}')",
            value.to_string_lossy()
        )),
        other => UsageError(other.to_string()),
    }
}

/// An unknown flag of subcommand `sub`.
pub fn unknown_flag<T>(flag: &str, sub: &str) -> Result<T, UsageError> {
    usage(format!(
        "unknown option '{flag}' for 'p2prs {sub}' (see 'p2prs {sub} --help')"
    ))
}

/// Parse `value` as a number, or say what `flag` expects.
pub fn number<T: FromStr>(flag: &str, value: &str, what: &str) -> Result<T, UsageError> {
    value
        .parse()
        .or_else(|_| usage(format!("{flag} expects {what}, got '{value}'")))
}

fn node_count(flag: &str, value: &str) -> Result<usize, UsageError> {
    let what = format!("a number of nodes from 2 to {MAX_DEMO_NODES}");
    let n: usize = number(flag, value, &what)?;
    if (2..=MAX_DEMO_NODES).contains(&n) {
        Ok(n)
    } else {
        usage(format!("{flag} expects {what}, got '{value}'"))
    }
}

/// `value`, unless it is empty or blank.
pub fn non_empty(flag: &str, value: String) -> Result<String, UsageError> {
    if value.trim().is_empty() {
        usage(format!("{flag} needs a non-empty value"))
    } else {
        Ok(value)
    }
}

/// Check that `value` looks like `host:port` (resolved later, when used).
pub fn address(flag: &str, value: String) -> Result<String, UsageError> {
    let port_ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(value)
    } else {
        usage(format!(
            "{flag} expects an address as host:port (like 127.0.0.1:4444), got '{value}'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, UsageError> {
        parse(line.split_whitespace())
    }

    #[test]
    fn node_defaults() {
        assert_eq!(parse_str("node"), Ok(Command::Node(NodeOpts::default())));
    }

    #[test]
    fn node_all_flags() {
        let cmd = parse_str(
            "node --host 0.0.0.0 --port=4444 --join a:1 -j b:2 --id 7 --json \
             --identity id.key --network-key k3y",
        );
        let want = NodeOpts {
            host: "0.0.0.0".into(),
            port: 4444,
            join: vec!["a:1".into(), "b:2".into()],
            id: Some(7),
            json: true,
            rendezvous: None,
            identity: Some("id.key".into()),
            network_key: Some("k3y".into()),
        };
        assert_eq!(cmd, Ok(Command::Node(want)));
    }

    #[test]
    fn demo_flags() {
        let cmd = parse_str("demo --nodes 8 --svg ring.svg --seed 3 --requests 5 --messages 0 -v");
        let want = DemoOpts {
            nodes: 8,
            messages: 0,
            requests: 5,
            seed: Some(3),
            svg: Some("ring.svg".into()),
            verbose: true,
        };
        assert_eq!(cmd, Ok(Command::Demo(want)));
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str("--help"), Ok(Command::Help(Topic::Main)));
        assert_eq!(parse_str("node --help"), Ok(Command::Help(Topic::Node)));
        assert_eq!(parse_str("demo -h"), Ok(Command::Help(Topic::Demo)));
        assert_eq!(parse_str("help demo"), Ok(Command::Help(Topic::Demo)));
        assert_eq!(parse_str("--version"), Ok(Command::Version));
    }

    fn error_of(line: &str) -> String {
        match parse_str(line) {
            Err(UsageError(msg)) => msg,
            Ok(cmd) => panic!("{line:?} parsed as {cmd:?}"),
        }
    }

    #[test]
    fn bad_arguments_say_why() {
        assert!(error_of("").contains("missing a subcommand"));
        assert!(error_of("fly").contains("unknown subcommand 'fly'"));
        assert!(error_of("node --port").contains("--port needs a value"));
        assert!(error_of("node --port 70000").contains("a port from 0 to 65535"));
        assert!(error_of("node --port=-1").contains("got '-1'"));
        assert!(error_of("node --join nowhere").contains("host:port"));
        assert!(error_of("node --join :80").contains("host:port"));
        assert!(error_of("node --json=yes").contains("takes no value"));
        assert!(error_of("node --bogus").contains("unknown option '--bogus'"));
        assert!(error_of("node stray").contains("unexpected argument 'stray'"));
        assert!(error_of("demo --nodes 1").contains("from 2 to 256"));
        assert!(error_of("demo --nodes many").contains("got 'many'"));
        assert!(error_of("demo --svg=").contains("non-empty"));
        assert!(error_of("--bogus").contains("unknown option '--bogus' (see 'p2prs --help')"));
        assert!(error_of("demo -x").contains("unknown option '-x' for 'p2prs demo'"));
        assert!(error_of("rendezvous --json").contains("for 'p2prs rendezvous'"));
        assert!(error_of("help fly").contains("no help for 'fly'"));
    }

    #[test]
    fn short_flags_and_rendezvous_help() {
        let cmd = parse_str("demo -n 4 -v");
        let want = DemoOpts {
            nodes: 4,
            verbose: true,
            ..DemoOpts::default()
        };
        assert_eq!(cmd, Ok(Command::Demo(want)));
        assert_eq!(parse_str("-V"), Ok(Command::Version));
        assert_eq!(parse_str("help"), Ok(Command::Help(Topic::Main)));
        assert_eq!(
            parse_str("help rendezvous"),
            Ok(Command::Help(Topic::Rendezvous))
        );
        assert_eq!(
            parse_str("rendezvous --help"),
            Ok(Command::Help(Topic::Rendezvous))
        );
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments_are_usage_errors() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(b"4\xff44".to_vec());
        for args in [
            vec![bad()],
            vec!["node".into(), bad()],
            vec!["node".into(), "--port".into(), bad()],
            vec!["node".into(), OsString::from_vec(b"--port=\xff".to_vec())],
            vec!["demo".into(), "--svg".into(), bad()],
        ] {
            match parse(args.clone()) {
                Err(UsageError(msg)) => assert!(msg.contains("not valid UTF-8"), "{args:?}: {msg}"),
                Ok(cmd) => panic!("{args:?} parsed as {cmd:?}"),
            }
        }
    }
}
