//! The first example of the p2py README, in Rust: node B joins the network of
//! node A and sends it a TEXT message by its node ID.
//!
//! Both nodes in one process, over loopback:
//!
//! ```text
//! cargo run --example text_message
//! ```
//!
//! Or in two terminals (or on two machines, with `--host 0.0.0.0` on A):
//!
//! ```text
//! cargo run --example text_message -- --role a --port 4444
//! cargo run --example text_message -- --role b --join 127.0.0.1:4444
//! ```

use p2prs::{Event, Message, Node, NodeId, TEXT};
use std::error::Error;
use std::time::Duration;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Node A is the first node of the network, so it holds ID 0.
const NODE_A: NodeId = NodeId(0);

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("p2prs=warn"))
        .init();
    let args = Args::from_command_line();
    let outcome = match args.role {
        Role::Both => both(),
        Role::A => node_a(&args.host, args.port.unwrap_or(4444)),
        Role::B => node_b(&args.host, args.port.unwrap_or(0), &args.join, "").and_then(leave),
    };
    if let Err(e) = outcome {
        eprintln!("text_message: {e}");
        std::process::exit(1);
    }
}

/// A and B in one process: B sends, A prints what it got, both stop.
fn both() -> Result<()> {
    let a = Node::builder().start()?;
    let events = a.events();
    println!("[A] Listening on {}", a.local_addr());
    let b = node_b("127.0.0.1", 0, &[a.local_addr().to_string()], "[B] ")?;
    loop {
        let event = events
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "node A got no message within 10 s")?;
        if print_text("[A] ", event) {
            break;
        }
    }
    leave(b)?;
    a.shutdown();
    Ok(())
}

/// Leave the network gracefully, then stop the node.
fn leave(node: Node) -> Result<()> {
    node.leave()?;
    node.shutdown();
    Ok(())
}

/// Node A: listen, and print every text message, forever (Ctrl-C stops it).
fn node_a(host: &str, port: u16) -> Result<()> {
    let node = Node::builder().host(host).port(port).start()?;
    let events = node.events();
    println!("Listening on {}", node.local_addr());
    for event in events {
        print_text("", event);
    }
    Ok(())
}

/// Print a TEXT message the way p2py does; returns whether `event` was one.
fn print_text(tag: &str, event: Event) -> bool {
    match event {
        Event::Message { from, message } if message.kind() == TEXT => {
            let text = message.as_text().unwrap_or_default();
            println!("{tag}({}) -> {text:?}", from.addr);
            true
        }
        _ => false,
    }
}

/// Node B: join A's network and send A "Hi!" by its ID. Returns the node.
fn node_b(host: &str, port: u16, join: &[String], tag: &str) -> Result<Node> {
    let node = Node::builder().host(host).port(port).start()?;
    println!("{tag}Listening on {}", node.local_addr());
    let id = node.join_network(join)?;
    println!("{tag}Successfully joined the network! Your ID is {id}");
    node.send_to_id(NODE_A, Message::text("Hi!"))?;
    println!("{tag}Sent message to ID {NODE_A}");
    Ok(node)
}

const USAGE: &str = "usage: text_message [--role a|b|both] [--host H] [--port P] [--join HOST:PORT]
  --role both   (default) run A and B in this process
  --role a      run node A only (default port 4444)
  --role b      run node B only; needs --join with A's address";

#[derive(Debug, PartialEq)]
enum Role {
    A,
    B,
    Both,
}

struct Args {
    role: Role,
    host: String,
    port: Option<u16>,
    join: Vec<String>,
}

impl Args {
    /// The arguments of this run; `--help` or a bad one exits here.
    fn from_command_line() -> Args {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        if argv.iter().any(|a| a == "-h" || a == "--help") {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Args::parse(argv.into_iter()).unwrap_or_else(|e| {
            eprintln!("error: {e}\n{USAGE}");
            std::process::exit(2);
        })
    }

    fn parse(mut it: impl Iterator<Item = String>) -> std::result::Result<Args, String> {
        let mut args = Args {
            role: Role::Both,
            host: "127.0.0.1".into(),
            port: None,
            join: Vec::new(),
        };
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--role" => args.role = parse_role(&value)?,
                "--host" => args.host = value,
                "--port" => {
                    args.port = Some(value.parse().map_err(|_| format!("bad port '{value}'"))?)
                }
                "--join" => args.join.push(value),
                _ => return Err(format!("unknown option '{flag}'")),
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
