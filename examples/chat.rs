//! A tiny chat: every line you type goes to every node of the network
//! (`Node::broadcast`), and every line the others type shows up here.
//!
//! ```text
//! cargo run --example chat -- --name alice --port 4444
//! cargo run --example chat -- --name bob --join 127.0.0.1:4444
//! cargo run --example chat -- --name carol --join 127.0.0.1:4444
//! ```
//!
//! End with Ctrl-D (end of input): the node leaves the network gracefully.

mod common;

use common::Result;
use p2prs::{Event, Message, Node};
use serde::{Deserialize, Serialize};
use std::io::BufRead;

/// The data of a `CHAT` message.
#[derive(Serialize, Deserialize)]
struct ChatLine {
    name: String,
    text: String,
}

const USAGE: &str = "usage: chat [--name NAME] [--host H] [--port P] [--join HOST:PORT]";

fn main() {
    common::init_logger();
    let args = Args::from_command_line();
    common::exit_on_error("chat", run(&args));
}

fn run(args: &Args) -> Result<()> {
    let node = Node::builder()
        .host(args.host.as_str())
        .port(args.port)
        .start()?;
    let events = node.events();
    println!("* {} listening on {}", args.name, node.local_addr());
    if let Some(addr) = &args.join {
        // Prints nothing: the `Joined` event says it below.
        node.join_network(&[addr.as_str()])?;
    }
    println!("* type a line to send it to everyone; Ctrl-D to leave");
    // Events are printed on a thread of their own, until the node shuts down.
    let printer = std::thread::Builder::new()
        .name("chat-events".into())
        .spawn(move || events.iter().for_each(show))
        .map_err(|e| p2prs::Error::InvalidArgument(format!("no thread for events: {e}")))?;
    for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
        say(&node, &args.name, line);
    }
    if node.joined() {
        node.leave()?;
    }
    node.shutdown();
    let _ = printer.join();
    println!("* left");
    Ok(())
}

fn say(node: &Node, name: &str, text: String) {
    if text.trim().is_empty() {
        return;
    }
    let line = ChatLine {
        name: name.to_string(),
        text,
    };
    let sent = Message::with_data("CHAT", &line).and_then(|msg| node.broadcast(msg));
    match sent {
        Ok(_) => {}
        Err(p2prs::Error::NotJoined) => println!("* nobody else is here yet"),
        Err(e) => println!("* not sent: {e}"),
    }
}

fn show(event: Event) {
    match event {
        Event::Message { message, .. } if message.kind() == "CHAT" => {
            match message.data::<ChatLine>() {
                Ok(line) => println!("<{}> {}", line.name, line.text),
                Err(e) => println!("* a CHAT message that does not parse: {e}"),
            }
        }
        Event::Joined { id } => println!("* joined the network as ID {id}"),
        Event::PeerJoined { id, addr } => println!("* node {id} joined ({addr})"),
        Event::PeerLeft { id } => println!("* node {id} left"),
        _ => {}
    }
}

struct Args {
    name: String,
    host: String,
    port: u16,
    join: Option<String>,
}

impl Args {
    /// The arguments of this run; `--help` or a bad one exits here.
    fn from_command_line() -> Args {
        common::command_line(USAGE, |flags| {
            let mut args = Args {
                name: std::env::var("USER").unwrap_or_else(|_| "anonymous".into()),
                host: "127.0.0.1".into(),
                port: 0,
                join: None,
            };
            for (flag, value) in flags {
                match flag.as_str() {
                    "--name" => args.name = common::needs(&flag, value)?,
                    "--host" => args.host = common::needs(&flag, value)?,
                    "--port" => args.port = common::port(&common::needs(&flag, value)?)?,
                    "--join" => args.join = Some(common::needs(&flag, value)?),
                    _ => return Err(common::unknown_option(&flag)),
                }
            }
            Ok(args)
        })
    }
}
