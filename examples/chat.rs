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

use crossbeam_channel::{select, unbounded, Receiver};
use p2prs::{Event, Message, Node};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::BufRead;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The data of a `CHAT` message.
#[derive(Serialize, Deserialize)]
struct ChatLine {
    name: String,
    text: String,
}

const USAGE: &str = "usage: chat [--name NAME] [--host H] [--port P] [--join HOST:PORT]";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("p2prs=warn"))
        .init();
    let args = Args::from_command_line();
    if let Err(e) = run(&args) {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
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
    let lines = read_lines();
    chat(&node, &args.name, &events, &lines);
    if node.joined() {
        node.leave()?;
    }
    node.shutdown();
    println!("* left");
    Ok(())
}

/// Lines of stdin on a channel, so one loop can wait for them and for events.
/// The reading thread ends by itself at the end of input.
fn read_lines() -> Receiver<String> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Print what arrives and send what is typed, until the end of input.
fn chat(node: &Node, name: &str, events: &Receiver<Event>, lines: &Receiver<String>) {
    loop {
        select! {
            recv(events) -> event => match event {
                Ok(event) => show(event),
                Err(_) => return,
            },
            recv(lines) -> line => match line {
                Ok(line) => say(node, name, line),
                Err(_) => return,
            },
        }
    }
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
            name: std::env::var("USER").unwrap_or_else(|_| "anonymous".into()),
            host: "127.0.0.1".into(),
            port: 0,
            join: None,
        };
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--name" => args.name = value,
                "--host" => args.host = value,
                "--port" => args.port = value.parse().map_err(|_| format!("bad port '{value}'"))?,
                "--join" => args.join = Some(value),
                _ => return Err(format!("unknown option '{flag}'")),
            }
        }
        Ok(args)
    }
}
