//! The help texts of `p2prs`, its subcommands and the node's stdin commands.

use crate::args::Topic;

const MAIN: &str = "\
p2prs: a peer-to-peer node with Chord routing by numeric node ID

Usage:
  p2prs demo [--nodes N] [--svg FILE]      build a ring in this process and show it working
  p2prs node [--port P] [--join ADDR]...   run one node, driven by commands on stdin
  p2prs rendezvous [--host H] [--port P]   run a rendezvous server for nodes behind NAT
  p2prs help [node|demo|rendezvous]        show help for a subcommand

Options:
  -h, --help       show this help
  -V, --version    show the version

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=p2prs=debug) to see more or less.
Exit codes: 0 success, 1 failure, 2 bad command line.
See docs/cli.md for every command and event.";

const NODE: &str = "\
p2prs node: run one node and drive it with commands on stdin

Usage:
  p2prs node [--host H] [--port P] [--join ADDR]... [--id N] [--json]
             [--rendezvous ADDR] [--identity FILE] [--network-key KEY]

Options:
      --host H       host or IP address to listen on (default 127.0.0.1)
  -p, --port P       port to listen on (default 0: any free port)
  -j, --join ADDR    join the network of the node at ADDR (host:port); repeat
                     to give fall-backs, tried in order. Without --join the node
                     starts a network when another node joins through it.
      --id N         ask for node ID N when joining (default: the next free one)
      --json         print each event as one JSON object per line
      --rendezvous ADDR  keep a link to the rendezvous server at ADDR (host:port)
                     and reach peers behind NAT by hole punching or its relay
      --identity FILE    the node's key pair: loaded from FILE, or created there
                     (mode 0600) on the first start, so a restarted node is the
                     same peer (default: a new key pair at each start)
      --network-key KEY  join and admit only nodes with this network key
                     (default: the P2PRS_NETWORK_KEY environment variable,
                     which ps does not show; none: an open network, still
                     encrypted)
  -h, --help         show this help

The node answers ECHO requests (with the same data) and ADD requests (n -> n+1).
It prints one line per event: listening, joined, message, response, error...

Commands on stdin, one per line:
";

const DEMO: &str = "\
p2prs demo: build a Chord ring in one process on 127.0.0.1 and show it working

Usage:
  p2prs demo [--nodes N] [--messages M] [--requests R] [--seed S] [--svg FILE] [-v]

Options:
  -n, --nodes N        nodes in the ring, 2 to 256 (default 16)
      --messages M     TEXT messages to send between random node IDs (default 100)
      --requests R     ADD requests (and lookups) between random node IDs (default 200)
      --seed S         seed of the random choices, to repeat a run (default: from the clock)
      --svg FILE       write a picture of the ring (nodes by ID, successor and finger edges)
  -v, --verbose        show the library's info logs on stderr too
  -h, --help           show this help

Prints what happened and a table: join time, hops per lookup, request latency,
and the network size each node sees. Exits 0 when every message and request
got through and every node sees the whole ring, 1 otherwise.";

/// The stdin commands of `p2prs node`, also printed by its `help` command.
pub const NODE_COMMANDS: &str =
    "  send TARGET TEXT...        send a TEXT message (the rest of the line)
  request TARGET TYPE [JSON] send a request, print the response (JSON: the rest of the line)
  broadcast TEXT...          send a TEXT message to every other node of the network
  lookup ID                  find the node holding ID through the ring, and the hops it took
  peers                      list the peer book (routing neighbours)
  id                         print this node's ID (null before joining)
  size                       print the network size
  help                       list these commands
  quit                       leave the network gracefully and stop (end of input does the same)
TARGET is host:port, or a node ID (a plain number) reached through the ring.";

/// The help text of `topic`.
pub fn text(topic: Topic) -> String {
    match topic {
        Topic::Main => MAIN.to_string(),
        Topic::Node => format!("{NODE}{NODE_COMMANDS}"),
        Topic::Demo => DEMO.to_string(),
        Topic::Rendezvous => crate::rendezvous::HELP.to_string(),
    }
}
