//! A picture of the ring: nodes on a circle by ID, successor and finger edges.
//! Pure code: it turns what the nodes know into an SVG document.
//!
//! A node's finger `k` is the first node at or after `ID + 2^k` on the ring
//! of 2^64 IDs. The peer book mixes fingers with the successor list and the
//! predecessor, so the picture draws, for each node, the fingers the ring's
//! membership implies that its peer book does hold.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::fmt::Write;

/// What the picture shows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingNode {
    /// Its ID.
    pub id: u64,
    /// Where it listens.
    pub addr: String,
    /// IDs in its peer book.
    pub neighbours: Vec<u64>,
}

const SIZE: f64 = 800.0;
const HEIGHT: f64 = 770.0;
const CENTER: (f64, f64) = (400.0, 420.0);
const RADIUS: f64 = 300.0;

/// The SVG document of `nodes` (any order; they are placed by ID rank).
pub fn render(nodes: &[RingNode]) -> String {
    let mut sorted: Vec<&RingNode> = nodes.iter().collect();
    sorted.sort_by_key(|n| n.id);
    let pos: HashMap<u64, (f64, f64)> = sorted
        .iter()
        .enumerate()
        .map(|(rank, n)| (n.id, place(rank, sorted.len())))
        .collect();
    let mut svg = header(sorted.len());
    finger_edges(&mut svg, &sorted, &pos);
    successor_edges(&mut svg, &sorted, &pos);
    for n in &sorted {
        node_mark(&mut svg, n, pos[&n.id]);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Where the node of rank `rank` of `n` sits: clockwise from the top.
fn place(rank: usize, n: usize) -> (f64, f64) {
    let angle = 2.0 * PI * rank as f64 / n.max(1) as f64 - PI / 2.0;
    (
        CENTER.0 + RADIUS * angle.cos(),
        CENTER.1 + RADIUS * angle.sin(),
    )
}

fn header(n: usize) -> String {
    let h = HEIGHT;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{SIZE}" height="{h}" viewBox="0 0 {SIZE} {h}" font-family="sans-serif">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#333"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="34" font-size="22" font-weight="bold">p2prs Chord ring: {n} nodes</text>
<line x1="20" y1="56" x2="60" y2="56" stroke="#333" stroke-width="2"/><text x="68" y="61" font-size="14">successor (next node by ID)</text>
<line x1="300" y1="56" x2="340" y2="56" stroke="#2b6cb0" stroke-opacity="0.5" stroke-width="1.2"/><text x="348" y="61" font-size="14">finger (first node at or after ID + 2^k)</text>
"##
    )
}

fn successor_edges(svg: &mut String, sorted: &[&RingNode], pos: &HashMap<u64, (f64, f64)>) {
    if sorted.len() < 2 {
        return;
    }
    for (i, n) in sorted.iter().enumerate() {
        let next = sorted[(i + 1) % sorted.len()];
        let (a, b) = shorten(pos[&n.id], pos[&next.id], 16.0);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="2" marker-end="url(#arrow)"/>"##,
            a.0, a.1, b.0, b.1
        );
    }
}

/// The distinct fingers of `id` on a ring of the sorted IDs `ring`.
fn fingers(id: u64, ring: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = (0..64)
        .filter_map(|k| {
            let start = id.wrapping_add(1u64 << k);
            let at = ring.partition_point(|&x| x < start);
            ring.get(at).or(ring.first()).copied()
        })
        .filter(|&f| f != id)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn finger_edges(svg: &mut String, sorted: &[&RingNode], pos: &HashMap<u64, (f64, f64)>) {
    let ring: Vec<u64> = sorted.iter().map(|n| n.id).collect();
    for (i, n) in sorted.iter().enumerate() {
        let successor = sorted[(i + 1) % sorted.len()].id;
        let known = fingers(n.id, &ring)
            .into_iter()
            .filter(|f| *f != successor && n.neighbours.contains(f));
        for to in known {
            let Some(&end) = pos.get(&to) else { continue };
            let start = pos[&n.id];
            let mid = ((start.0 + end.0) / 2.0, (start.1 + end.1) / 2.0);
            let ctrl = (
                CENTER.0 + (mid.0 - CENTER.0) * 0.35,
                CENTER.1 + (mid.1 - CENTER.1) * 0.35,
            );
            let _ = writeln!(
                svg,
                r##"<path d="M {:.1} {:.1} Q {:.1} {:.1} {:.1} {:.1}" fill="none" stroke="#2b6cb0" stroke-opacity="0.35" stroke-width="1.2"/>"##,
                start.0, start.1, ctrl.0, ctrl.1, end.0, end.1
            );
        }
    }
}

fn node_mark(svg: &mut String, n: &RingNode, (x, y): (f64, f64)) {
    let _ = writeln!(
        svg,
        r##"<g><title>node {} at {}</title><circle cx="{x:.1}" cy="{y:.1}" r="15" fill="#f6ad55" stroke="#333" stroke-width="1.5"/><text x="{x:.1}" y="{:.1}" font-size="13" text-anchor="middle">{}</text></g>"##,
        n.id,
        escape(&n.addr),
        y + 4.5,
        n.id
    );
}

/// The segment from `a` to `b`, cut by `by` at both ends (so arrows stop at the circles).
fn shorten(a: (f64, f64), b: (f64, f64), by: f64) -> ((f64, f64), (f64, f64)) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len = (dx * dx + dy * dy).sqrt();
    if len <= 2.0 * by {
        return (a, b);
    }
    let (ux, uy) = (dx / len * by, dy / len * by);
    ((a.0 + ux, a.1 + uy), (b.0 - ux, b.1 - uy))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, neighbours: &[u64]) -> RingNode {
        RingNode {
            id,
            addr: format!("127.0.0.1:{}", 4000 + id),
            neighbours: neighbours.to_vec(),
        }
    }

    #[test]
    fn fingers_wrap_around_the_ring() {
        let ring = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(fingers(0, &ring), vec![1, 2, 4, 8]);
        // 7 + 4 = 11 and beyond are past the last ID: node 0 holds them.
        assert_eq!(fingers(7, &ring), vec![0, 8, 9]);
        assert_eq!(fingers(5, &[5]), Vec::<u64>::new());
    }

    #[test]
    fn draws_every_node_successor_and_known_finger() {
        // Ring 0, 1, 2: node 0's fingers are 1 and 2, node 1's are 2 and 0,
        // node 2's is 0 only (its successor). Node 1 does not know node 0.
        let nodes = vec![node(2, &[0, 1]), node(0, &[1, 2]), node(1, &[2])];
        let svg = render(&nodes);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("marker-end").count(), 3);
        // Only node 0 -> 2 is a finger that is not a successor and is known.
        assert_eq!(svg.matches(" Q ").count(), 1);
        assert!(svg.contains("node 1 at 127.0.0.1:4001"));
    }

    #[test]
    fn first_node_is_at_the_top() {
        let (x, y) = place(0, 4);
        assert!((x - CENTER.0).abs() < 1e-9);
        assert!((y - (CENTER.1 - RADIUS)).abs() < 1e-9);
    }

    #[test]
    fn unknown_neighbours_are_skipped() {
        let svg = render(&[node(0, &[99])]);
        assert_eq!(svg.matches(" Q ").count(), 0);
    }
}
