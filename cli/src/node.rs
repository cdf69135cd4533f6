//! `p2prs node`: one node, driven by commands on stdin, printing its events.

use crate::args::NodeOpts;
use crate::handlers;
use crate::help::NODE_COMMANDS;
use crate::input::{parse_line, Input, TargetArg};
use crate::output::{Out, Printer};

use p2prs::{Event, Events, HandlerResult, Incoming, Message, Node};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Run the node until `quit` or the end of stdin.
pub fn run(opts: NodeOpts) -> ExitCode {
    let printer = Arc::new(Printer::new(opts.json));
    let node = match start(&opts, &printer) {
        Ok(node) => node,
        Err(e) => {
            printer.print(&Out::error(format!("starting the node: {e}")));
            return ExitCode::FAILURE;
        }
    };
    let events = node.events();
    printer.print(&Out::Listening {
        addr: node.local_addr(),
        key: node.public_key().to_string(),
    });
    let watcher = match Watcher::spawn(events, Arc::clone(&printer), node.local_addr()) {
        Ok(w) => w,
        Err(e) => {
            printer.print(&Out::error(format!("starting the event thread: {e}")));
            node.shutdown();
            return ExitCode::FAILURE;
        }
    };
    let joined = opts.join.is_empty() || join(&node, &opts.join, &printer);
    if joined {
        read_commands(&node, &printer, std::io::stdin().lock());
    }
    stop(&node, &printer);
    watcher.stop();
    printer.print(&Out::Shutdown);
    if joined {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn start(opts: &NodeOpts, printer: &Arc<Printer>) -> p2prs::Result<Node> {
    let mut builder = Node::builder()
        .host(opts.host.clone())
        .port(opts.port)
        .handler("ECHO", serving(printer, handlers::echo))
        .handler("ADD", serving(printer, handlers::add));
    if let Some(id) = opts.id {
        builder = builder.id(id);
    }
    if let Some(rv) = &opts.rendezvous {
        builder = builder.rendezvous(rv.clone());
    }
    if let Some(path) = &opts.identity {
        builder = builder.identity_file(path);
    }
    if let Some(key) = crate::args::network_key(&opts.network_key) {
        builder = builder.network_key(key);
    }
    builder.start()
}

/// Wrap a handler so that each request it answers is printed (once answered).
fn serving(
    printer: &Arc<Printer>,
    handler: fn(&mut Incoming) -> HandlerResult,
) -> impl Fn(&mut Incoming) -> HandlerResult + Send + Sync + 'static {
    let printer = Arc::clone(printer);
    move |req| {
        let (from, message) = (req.from().clone(), req.message().clone());
        let result = handler(req);
        // A request the handler refused was not answered (the asker gets
        // the error; the library logs it).
        if result.is_ok() {
            printer.print(&Out::Served { from, message });
        }
        result
    }
}

/// Join through `addrs`; prints the joined event, or the error. Returns success.
fn join(node: &Node, addrs: &[String], printer: &Printer) -> bool {
    match node.join_network(addrs) {
        Ok(id) => {
            printer.joined(id, node.local_addr());
            true
        }
        Err(e) => {
            // The library cannot name an address it could not resolve;
            // one it could, it names already.
            let text = e.to_string();
            let text = if addrs.iter().all(|a| text.contains(a.as_str())) {
                text
            } else {
                format!("{text} (through {})", addrs.join(", "))
            };
            printer.print(&Out::error(text));
            false
        }
    }
}

/// Whether to keep reading commands.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// Read and run commands until `quit` or the end of input.
fn read_commands(node: &Node, printer: &Printer, mut input: impl BufRead) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if run_line(node, printer, &String::from_utf8_lossy(&line)) == Flow::Quit {
                    return;
                }
            }
            Err(e) => {
                printer.print(&Out::error(format!("reading stdin: {e}")));
                return;
            }
        }
    }
}

fn run_line(node: &Node, printer: &Printer, line: &str) -> Flow {
    let input = match parse_line(line) {
        Ok(input) => input,
        Err(error) => {
            let command = line.split_whitespace().next().map(String::from);
            printer.print(&Out::Error { error, command });
            return Flow::Continue;
        }
    };
    if input == Input::Quit {
        return Flow::Quit;
    }
    let name = command_name(&input);
    match execute(node, input) {
        Ok(Some(out)) => printer.print(&out),
        Ok(None) => {}
        Err(e) => printer.print(&Out::Error {
            error: e.to_string(),
            command: Some(name.into()),
        }),
    }
    Flow::Continue
}

fn command_name(input: &Input) -> &'static str {
    match input {
        Input::Send { .. } => "send",
        Input::Request { .. } => "request",
        Input::Broadcast { .. } => "broadcast",
        Input::Lookup { .. } => "lookup",
        Input::Peers => "peers",
        Input::Id => "id",
        Input::Size => "size",
        Input::Help => "help",
        Input::Quit => "quit",
        Input::Nothing => "",
    }
}

/// Run one command; its result is the event to print, if any.
fn execute(node: &Node, input: Input) -> p2prs::Result<Option<Out>> {
    Ok(Some(match input {
        Input::Send { target, text } => send(node, &target, text)?,
        Input::Request { target, kind, data } => request(node, &target, Message::new(kind, data))?,
        Input::Broadcast { text } => Out::Broadcast {
            direct: node.broadcast(Message::text(text))?,
        },
        Input::Lookup { id } => {
            let route = node.lookup(id)?;
            Out::Route {
                id,
                owner: route.owner,
                hops: route.hops,
            }
        }
        Input::Peers => Out::Peers(node.peer_book()),
        Input::Id => Out::Id(node.id()),
        Input::Size => Out::Size(node.network_size()),
        Input::Help => Out::Help(NODE_COMMANDS.to_string()),
        Input::Quit | Input::Nothing => return Ok(None),
    }))
}

fn send(node: &Node, target: &TargetArg, text: String) -> p2prs::Result<Out> {
    node.send(target.to_target(), Message::text(text))?;
    Ok(Out::Sent {
        to: target.to_string(),
        kind: p2prs::TEXT.into(),
    })
}

fn request(node: &Node, target: &TargetArg, msg: Message) -> p2prs::Result<Out> {
    let started = Instant::now();
    let message = node.request(target.to_target(), msg)?;
    Ok(Out::Response {
        to: target.to_string(),
        message,
        ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Leave the network gracefully (when in one), then stop the node.
fn stop(node: &Node, printer: &Printer) {
    if let Some(id) = node.id() {
        match node.leave() {
            Ok(()) => {
                printer.left();
                printer.print(&Out::Left { id: Some(id) });
            }
            Err(e) => printer.print(&Out::error(format!("leaving the network: {e}"))),
        }
    }
    node.shutdown();
}

/// A thread that prints the node's events until the node shuts down.
struct Watcher {
    thread: JoinHandle<()>,
}

impl Watcher {
    fn spawn(events: Events, printer: Arc<Printer>, me: SocketAddr) -> std::io::Result<Watcher> {
        let thread = std::thread::Builder::new()
            .name("p2prs-cli-events".into())
            .spawn(move || {
                for ev in &events {
                    print_event(&printer, ev, me);
                }
            })?;
        Ok(Watcher { thread })
    }

    /// Join the thread: call it once the node has shut down, which ends its
    /// events after the last one has been printed.
    fn stop(self) {
        if self.thread.join().is_err() {
            log::error!("the event thread panicked");
        }
    }
}

fn print_event(printer: &Printer, ev: Event, me: SocketAddr) {
    match ev {
        Event::Message { from, message } => printer.print(&Out::Message { from, message }),
        Event::Joined { id } => printer.joined(id, me),
        Event::Left => {}
        Event::PeerJoined { id, addr } => printer.print(&Out::PeerJoined { id, addr }),
        Event::PeerLeft { id } => printer.print(&Out::PeerLeft { id }),
        other => log::debug!("event {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use serde_json::{json, Value};
    use std::io::{Cursor, Write};

    /// An output that tests can read back.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn events(&self) -> Vec<Value> {
            let text = String::from_utf8_lossy(&self.0.lock()).into_owned();
            text.lines()
                .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                .collect()
        }
    }

    fn kinds(events: &[Value]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or("?"))
            .collect()
    }

    fn cli_node(opts: &NodeOpts) -> (Node, Arc<Printer>, Lines) {
        let lines = Lines::default();
        let printer = Arc::new(Printer::to(true, Box::new(lines.clone())));
        let node = start(opts, &printer).expect("the node starts");
        (node, printer, lines)
    }

    fn script(node: &Node, printer: &Printer, text: &str) {
        read_commands(node, printer, Cursor::new(text.as_bytes().to_vec()));
    }

    #[test]
    fn commands_by_address() {
        let (a, pa, a_out) = cli_node(&NodeOpts::default());
        let watcher = Watcher::spawn(a.events(), pa, a.local_addr()).expect("watcher");
        let (b, pb, b_out) = cli_node(&NodeOpts::default());
        let to = a.local_addr();
        script(
            &b,
            &pb,
            &format!(
                "send {to} Hi  there!\nrequest {to} ADD 17\nrequest {to} ECHO {{\"x\": [1, 2]}}\n\
                 request {to} NOPE\nbogus\n# comment\n\nid\nquit\nsize\n"
            ),
        );
        let ev = b_out.events();
        assert_eq!(
            kinds(&ev),
            ["sent", "response", "response", "error", "error", "id"]
        );
        assert_eq!(
            (&ev[1]["type"], &ev[1]["data"]),
            (&json!("ADD RESP"), &json!(18))
        );
        assert_eq!(ev[2]["data"], json!({"x": [1, 2]}));
        assert!(ev[3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_handler")));
        assert_eq!(ev[4]["command"], "bogus");
        assert_eq!(ev[5]["id"], Value::Null);
        // The TEXT frame went before the requests on the same connection, so
        // it is in A's events by now; shutting A down ends its events, and
        // the watcher prints what was queued before it stops.
        a.shutdown();
        watcher.stop();
        // Handler threads and the watcher print in any order.
        let got = a_out.events();
        let mut got_kinds = kinds(&got);
        got_kinds.sort_unstable();
        assert_eq!(got_kinds, ["message", "served", "served"]);
        let text = got
            .iter()
            .find(|e| e["event"] == "message")
            .expect("a message");
        assert_eq!(
            (&text["type"], &text["data"]),
            (&json!("TEXT"), &json!("Hi  there!"))
        );
        assert_eq!(text["from"], json!(b.local_addr()));
        a.shutdown();
        b.shutdown();
    }

    #[test]
    fn commands_by_id_in_a_ring() {
        let (a, _pa, _a_out) = cli_node(&NodeOpts::default());
        let opts = NodeOpts {
            id: Some(5),
            ..NodeOpts::default()
        };
        let (b, pb, b_out) = cli_node(&opts);
        assert!(join(&b, &[a.local_addr().to_string()], &pb));
        script(
            &b,
            &pb,
            "send 0 by ID\nrequest 0 ADD 1\nlookup 0\nid\nsend 9 nobody\n",
        );
        stop(&b, &pb);
        let ev = b_out.events();
        assert_eq!(
            kinds(&ev),
            ["joined", "sent", "response", "route", "id", "error", "left"]
        );
        assert_eq!(ev[0]["id"], 5);
        assert_eq!(ev[2]["data"], 2);
        assert_eq!(ev[3]["owner"]["id"], 0);
        assert_eq!(ev[4]["id"], 5);
        assert_eq!(ev[5]["error"], "no node holds ID 9");
        assert_eq!(ev[6]["id"], 5);
        a.shutdown();
    }

    #[test]
    fn a_failed_join_is_reported() {
        let (a, pa, a_out) = cli_node(&NodeOpts::default());
        // Nothing listens on port 1 of loopback.
        assert!(!join(&a, &["127.0.0.1:1".to_string()], &pa));
        let ev = a_out.events();
        assert_eq!(kinds(&ev), ["error"]);
        assert!(ev[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("could not join") && e.contains("127.0.0.1:1")));
        a.shutdown();
    }
}
