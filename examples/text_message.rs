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

mod common;

use common::{Result, Role, RoleArgs};
use p2prs::{Event, Message, Node, NodeId, TEXT};
use std::time::Duration;

/// Node A is the first node of the network, so it holds ID 0.
const NODE_A: NodeId = NodeId(0);

fn main() {
    common::init_logger();
    let args = RoleArgs::from_command_line("text_message");
    let outcome = match args.role {
        Role::Both => both(),
        Role::A => node_a(&args.host, args.port.unwrap_or(4444)),
        Role::B => node_b(&args.host, args.port.unwrap_or(0), &args.join, "").and_then(leave),
    };
    common::exit_on_error("text_message", outcome);
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
