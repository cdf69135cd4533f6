//! The command line, parsed by hand: `p2prs SUBCOMMAND [FLAGS]`.
//!
//! Pure code: it turns a list of strings into a [`Command`] or a
//! [`UsageError`] that says what is wrong and how to fix it.

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
        }
    }
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
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some((first, rest)) = args.split_first() else {
        return usage("missing a subcommand: try 'p2prs demo', 'p2prs node' or 'p2prs --help'");
    };
    match first.as_str() {
        "-h" | "--help" => Ok(Command::Help(Topic::Main)),
        "help" => help_topic(rest),
        "-V" | "--version" => Ok(Command::Version),
        "node" => parse_node(rest),
        "demo" => parse_demo(rest),
        "rendezvous" => crate::rendezvous::parse(rest).map(Command::Rendezvous),
        flag if flag.starts_with('-') => {
            usage(format!("unknown option '{flag}' (see 'p2prs --help')"))
        }
        other => usage(format!(
            "unknown subcommand '{other}': the subcommands are 'node', 'demo' and 'rendezvous' (see 'p2prs --help')"
        )),
    }
}

fn help_topic(rest: &[String]) -> Result<Command, UsageError> {
    match rest.first().map(String::as_str) {
        None => Ok(Command::Help(Topic::Main)),
        Some("node") => Ok(Command::Help(Topic::Node)),
        Some("demo") => Ok(Command::Help(Topic::Demo)),
        Some("rendezvous") => {
            crate::rendezvous::parse(&["--help".to_string()]).map(Command::Rendezvous)
        }
        Some(other) => usage(format!(
            "no help for '{other}': try 'p2prs help node', 'p2prs help demo' or 'p2prs help rendezvous'"
        )),
    }
}

fn parse_node(args: &[String]) -> Result<Command, UsageError> {
    let mut opts = NodeOpts::default();
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help(Topic::Node)),
            "--host" => opts.host = non_empty(&flag, flags.value(&flag)?)?,
            "-p" | "--port" => {
                opts.port = number(&flag, &flags.value(&flag)?, "a port from 0 to 65535")?
            }
            "-j" | "--join" => opts.join.push(address(&flag, flags.value(&flag)?)?),
            "--id" => {
                opts.id = Some(number(
                    &flag,
                    &flags.value(&flag)?,
                    "a node ID (a whole number)",
                )?)
            }
            "--json" => {
                flags.switch(&flag)?;
                opts.json = true;
            }
            "--rendezvous" => opts.rendezvous = Some(address(&flag, flags.value(&flag)?)?),
            _ => return unknown_flag(&flag, "node"),
        }
    }
    Ok(Command::Node(opts))
}

fn parse_demo(args: &[String]) -> Result<Command, UsageError> {
    let mut opts = DemoOpts::default();
    let mut flags = Flags::new(args);
    while let Some(flag) = flags.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help(Topic::Demo)),
            "-n" | "--nodes" => opts.nodes = node_count(&flag, &flags.value(&flag)?)?,
            "--messages" => opts.messages = number(&flag, &flags.value(&flag)?, "a count")?,
            "--requests" => opts.requests = number(&flag, &flags.value(&flag)?, "a count")?,
            "--seed" => opts.seed = Some(number(&flag, &flags.value(&flag)?, "a whole number")?),
            "--svg" => opts.svg = Some(PathBuf::from(non_empty(&flag, flags.value(&flag)?)?)),
            "-v" | "--verbose" => {
                flags.switch(&flag)?;
                opts.verbose = true;
            }
            _ => return unknown_flag(&flag, "demo"),
        }
    }
    Ok(Command::Demo(opts))
}

fn unknown_flag<T>(flag: &str, sub: &str) -> Result<T, UsageError> {
    usage(format!(
        "unknown option '{flag}' for 'p2prs {sub}' (see 'p2prs {sub} --help')"
    ))
}

/// Walks the flags of a subcommand: `--flag value`, `--flag=value`, `--switch`.
struct Flags<'a> {
    args: &'a [String],
    pos: usize,
    inline: Option<String>,
}

impl<'a> Flags<'a> {
    fn new(args: &'a [String]) -> Self {
        Flags {
            args,
            pos: 0,
            inline: None,
        }
    }

    /// The next flag's name; `--flag=value` keeps the value for [`Flags::value`].
    fn next_flag(&mut self) -> Result<Option<String>, UsageError> {
        let Some(arg) = self.args.get(self.pos) else {
            return Ok(None);
        };
        self.pos += 1;
        if !arg.starts_with('-') || arg == "-" {
            return usage(format!(
                "unexpected argument '{arg}' (flags start with '--')"
            ));
        }
        match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                self.inline = Some(value.to_string());
                Ok(Some(name.to_string()))
            }
            _ => Ok(Some(arg.clone())),
        }
    }

    /// The value of `flag`: after `=`, or the next argument.
    fn value(&mut self, flag: &str) -> Result<String, UsageError> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        let Some(v) = self.args.get(self.pos) else {
            return usage(format!("{flag} needs a value"));
        };
        self.pos += 1;
        Ok(v.clone())
    }

    /// A flag without a value: refuses `--flag=value`.
    fn switch(&mut self, flag: &str) -> Result<(), UsageError> {
        match self.inline.take() {
            Some(v) => usage(format!("{flag} takes no value (got '{v}')")),
            None => Ok(()),
        }
    }
}

fn number<T: FromStr>(flag: &str, value: &str, what: &str) -> Result<T, UsageError> {
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

fn non_empty(flag: &str, value: String) -> Result<String, UsageError> {
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
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        parse(&args)
    }

    #[test]
    fn node_defaults() {
        assert_eq!(parse_str("node"), Ok(Command::Node(NodeOpts::default())));
    }

    #[test]
    fn node_all_flags() {
        let cmd = parse_str("node --host 0.0.0.0 --port=4444 --join a:1 -j b:2 --id 7 --json");
        let want = NodeOpts {
            host: "0.0.0.0".into(),
            port: 4444,
            join: vec!["a:1".into(), "b:2".into()],
            id: Some(7),
            json: true,
            rendezvous: None,
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
    }
}
