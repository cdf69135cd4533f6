//! The second example of the p2py README, in Rust: node A defines an `ADD`
//! request type that adds 1 to a number; node B joins A's network and asks
//! A, by its node ID, for 17 + 1.
//!
//! Both nodes in one process, over loopback:
//!
//! ```text
//! cargo run --example add_request
//! ```
//!
//! Or in two terminals (or on two machines, with `--host 0.0.0.0` on A):
//!
//! ```text
//! cargo run --example add_request -- --role a --port 4444
//! cargo run --example add_request -- --role b --join 127.0.0.1:4444
//! ```

mod common;

use common::{Result, Role, RoleArgs};
use p2prs::{HandlerResult, Incoming, Message, Node, NodeId};

/// Node A is the first node of the network, so it holds ID 0.
const NODE_A: NodeId = NodeId(0);

fn main() {
    common::init_logger();
    let args = RoleArgs::from_command_line("add_request");
    let outcome = match args.role {
        Role::Both => both(),
        Role::A => node_a(&args.host, args.port.unwrap_or(4444), "").map(wait_forever),
        Role::B => node_b(&args.host, args.port.unwrap_or(0), &args.join, "").and_then(leave),
    };
    common::exit_on_error("add_request", outcome);
}

/// The handler: read the number, add one, respond.
fn handle_add(request: &mut Incoming) -> HandlerResult {
    let n: i64 = request.message().data()?; // Get data from the request
    let n_plus_one = n.checked_add(1).ok_or("the number is too large")?; // Process it
    request.respond(Message::new("ADD RESP", n_plus_one))?; // Respond
    Ok(())
}

/// A and B in one process: B asks, A answers, both stop.
fn both() -> Result<()> {
    let a = node_a("127.0.0.1", 0, "[A] ")?;
    let b = node_b("127.0.0.1", 0, &[a.local_addr().to_string()], "[B] ")?;
    leave(b)?;
    a.shutdown();
    Ok(())
}

/// Node A: answer ADD requests.
fn node_a(host: &str, port: u16, tag: &str) -> Result<Node> {
    let node = Node::builder().host(host).port(port).start()?;
    node.add_handler("ADD", handle_add)?; // Assign the handler to the "ADD" type
    println!("{tag}Listening on {}", node.local_addr());
    Ok(node)
}

/// Keep node A running until the process is stopped (Ctrl-C).
fn wait_forever(_node: Node) {
    loop {
        std::thread::park();
    }
}

/// Node B: join A's network and ask A for 17 + 1. Returns the node.
fn node_b(host: &str, port: u16, join: &[String], tag: &str) -> Result<Node> {
    let node = Node::builder().host(host).port(port).start()?;
    println!("{tag}Listening on {}", node.local_addr());
    let id = node.join_network(join)?;
    println!("{tag}Successfully joined the network! Your ID is {id}");
    println!("{tag}Sending an ADD request to ID {NODE_A}");
    let resp = node.request(NODE_A, Message::new("ADD", 17))?; // Ask A and wait for the answer
    let result: i64 = resp.data()?;
    println!("{tag}17 + 1 = {result}");
    Ok(node)
}

/// Leave the network gracefully, then stop the node.
fn leave(node: Node) -> Result<()> {
    node.leave()?;
    node.shutdown();
    Ok(())
}
