//! The commands `p2prs node` reads on stdin, one per line. Pure parsing.

use p2prs::{NodeId, Target};
use serde_json::Value;
use std::fmt;

/// Where a `send` or `request` goes, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetArg {
    /// `host:port`.
    Addr(String),
    /// A node ID, reached through the ring.
    Id(NodeId),
}

impl TargetArg {
    /// Parse `host:port` or a plain number.
    pub fn parse(s: &str) -> Result<TargetArg, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(|n| TargetArg::Id(NodeId(n)))
                .map_err(|_| format!("node ID {s} is too large (the largest is {})", u64::MAX));
        }
        crate::args::address("TARGET", s.to_string())
            .map(TargetArg::Addr)
            .map_err(|_| {
                format!("TARGET must be host:port or a node ID (a plain number), got '{s}'")
            })
    }

    /// The library's target.
    pub fn to_target(&self) -> Target {
        match self {
            TargetArg::Addr(a) => Target::Addr(a.clone()),
            TargetArg::Id(id) => Target::Id(*id),
        }
    }
}

impl fmt::Display for TargetArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetArg::Addr(a) => f.write_str(a),
            TargetArg::Id(id) => write!(f, "{id}"),
        }
    }
}

/// One line of input.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `send TARGET TEXT...`
    Send {
        /// Where to.
        target: TargetArg,
        /// The text (the rest of the line).
        text: String,
    },
    /// `request TARGET TYPE [JSON]`
    Request {
        /// Where to.
        target: TargetArg,
        /// The message type.
        kind: String,
        /// The data (null when the line ends after TYPE).
        data: Value,
    },
    /// `broadcast TEXT...`
    Broadcast {
        /// The text.
        text: String,
    },
    /// `lookup ID`
    Lookup {
        /// The ID to find.
        id: NodeId,
    },
    /// `peers`
    Peers,
    /// `id`
    Id,
    /// `size`
    Size,
    /// `help`
    Help,
    /// `quit` or `exit`
    Quit,
    /// An empty line or a `#` comment.
    Nothing,
}

/// Split off the first whitespace-separated word; the rest keeps its inner spaces.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Parse one line; the error says what is wrong, with the command's usage.
pub fn parse_line(line: &str) -> Result<Input, String> {
    let (cmd, rest) = word(line.trim());
    match cmd {
        "" => Ok(Input::Nothing),
        c if c.starts_with('#') => Ok(Input::Nothing),
        "send" => parse_send(rest),
        "request" | "req" => parse_request(rest),
        "broadcast" => parse_broadcast(rest),
        "lookup" => parse_lookup(rest),
        "peers" => no_args(cmd, rest, Input::Peers),
        "id" => no_args(cmd, rest, Input::Id),
        "size" => no_args(cmd, rest, Input::Size),
        "help" | "?" => Ok(Input::Help),
        "quit" | "exit" => no_args(cmd, rest, Input::Quit),
        other => Err(format!(
            "unknown command '{other}' (type 'help' for the list)"
        )),
    }
}

fn no_args(cmd: &str, rest: &str, input: Input) -> Result<Input, String> {
    if rest.is_empty() {
        Ok(input)
    } else {
        Err(format!("'{cmd}' takes no arguments, got '{rest}'"))
    }
}

fn parse_send(rest: &str) -> Result<Input, String> {
    let (target, text) = word(rest);
    if target.is_empty() || text.is_empty() {
        return Err("usage: send TARGET TEXT...".into());
    }
    Ok(Input::Send {
        target: TargetArg::parse(target)?,
        text: text.to_string(),
    })
}

fn parse_request(rest: &str) -> Result<Input, String> {
    let (target, rest) = word(rest);
    let (kind, json) = word(rest);
    if target.is_empty() || kind.is_empty() {
        return Err("usage: request TARGET TYPE [JSON]".into());
    }
    let data = if json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json)
            .map_err(|e| format!("request data is not valid JSON ({e}): {json}"))?
    };
    Ok(Input::Request {
        target: TargetArg::parse(target)?,
        kind: kind.to_string(),
        data,
    })
}

fn parse_broadcast(rest: &str) -> Result<Input, String> {
    if rest.is_empty() {
        return Err("usage: broadcast TEXT...".into());
    }
    Ok(Input::Broadcast {
        text: rest.to_string(),
    })
}

fn parse_lookup(rest: &str) -> Result<Input, String> {
    match TargetArg::parse(rest) {
        Ok(TargetArg::Id(id)) => Ok(Input::Lookup { id }),
        _ => Err(format!("usage: lookup ID (a plain number), got '{rest}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn send_keeps_inner_spaces() {
        let got = parse_line("  send 127.0.0.1:4444   Hi  there! ");
        let want = Input::Send {
            target: TargetArg::Addr("127.0.0.1:4444".into()),
            text: "Hi  there!".into(),
        };
        assert_eq!(got, Ok(want));
    }

    #[test]
    fn send_to_an_id() {
        let got = parse_line("send 0 Hi!");
        let want = Input::Send {
            target: TargetArg::Id(NodeId(0)),
            text: "Hi!".into(),
        };
        assert_eq!(got, Ok(want));
    }

    #[test]
    fn request_json_is_the_rest_of_the_line() {
        let got = parse_line(r#"request 3 ECHO {"a": [1, 2], "b": "x y"}"#);
        let want = Input::Request {
            target: TargetArg::Id(NodeId(3)),
            kind: "ECHO".into(),
            data: json!({"a": [1, 2], "b": "x y"}),
        };
        assert_eq!(got, Ok(want));
        let bare = parse_line("request localhost:1 PING");
        assert!(matches!(
            bare,
            Ok(Input::Request {
                data: Value::Null,
                ..
            })
        ));
    }

    #[test]
    fn simple_commands() {
        assert_eq!(parse_line("peers"), Ok(Input::Peers));
        assert_eq!(parse_line("id"), Ok(Input::Id));
        assert_eq!(parse_line("size"), Ok(Input::Size));
        assert_eq!(parse_line("quit"), Ok(Input::Quit));
        assert_eq!(parse_line(""), Ok(Input::Nothing));
        assert_eq!(parse_line("# a comment"), Ok(Input::Nothing));
        assert_eq!(parse_line("lookup 5"), Ok(Input::Lookup { id: NodeId(5) }));
        assert_eq!(
            parse_line("broadcast hello all"),
            Ok(Input::Broadcast {
                text: "hello all".into()
            })
        );
    }

    fn error_of(line: &str) -> String {
        match parse_line(line) {
            Err(e) => e,
            Ok(input) => panic!("{line:?} parsed as {input:?}"),
        }
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(error_of("fly").contains("unknown command 'fly'"));
        assert!(error_of("send").contains("usage: send"));
        assert!(error_of("send 1").contains("usage: send"));
        assert!(error_of("send nowhere hi").contains("host:port or a node ID"));
        assert!(error_of("send 99999999999999999999 hi").contains("too large"));
        assert!(error_of("request 1").contains("usage: request"));
        assert!(error_of("request 1 ADD {oops").contains("not valid JSON"));
        assert!(error_of("lookup x").contains("usage: lookup"));
        assert!(error_of("peers now").contains("takes no arguments"));
    }
}
