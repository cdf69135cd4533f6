//! The bench's chart of latency and hops against ring size, as a small SVG
//! document. Pure code: figures in, text out.
//!
//! Two panels side by side, both with the ring size on a log2 x axis: request
//! latency (µs, log10 y axis) of a first request between a pair and of the
//! same pair again, median and p99 each; and lookup hops (mean and p99)
//! next to `log2(N) / 2`, what Chord's fingers promise.

use std::fmt::Write;

/// The figures of one ring size.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Nodes in the ring.
    pub nodes: usize,
    /// First request between a pair: median and p99, µs.
    pub first: (f64, f64),
    /// The same pair again at once: median and p99, µs.
    pub again: (f64, f64),
    /// Lookup hops: mean and p99.
    pub hops: (f64, f64),
}

const W: f64 = 780.0;
const H: f64 = 440.0;
/// Plot areas: (left, top, right, bottom).
const LAT: (f64, f64, f64, f64) = (70.0, 80.0, 440.0, 340.0);
const HOPS: (f64, f64, f64, f64) = (540.0, 80.0, 750.0, 340.0);

const BLUE: &str = "#2b6cb0";
const ORANGE: &str = "#dd6b20";
const GREEN: &str = "#2f855a";
const GREY: &str = "#888";

/// The SVG document of `rows` (sorted by size here), under `title` and
/// `subtitle` (plain text; `&`, `<` and `>` are escaped).
pub fn render(rows: &[Row], title: &str, subtitle: &str) -> String {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.nodes);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"##
    );
    s.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        s,
        r##"<text x="20" y="28" font-size="17" font-weight="bold">{}</text>"##,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="20" y="48" font-size="12" fill="#444">{}</text>"##,
        esc(subtitle)
    );
    if rows.is_empty() {
        s.push_str("</svg>\n");
        return s;
    }
    let x = XAxis::of(&rows);

    // Latency panel: log10 y.
    let lat: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.first.0, r.first.1, r.again.0, r.again.1])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = lat.iter().copied().fold(f64::MAX, f64::min).max(0.1);
    let hi = lat.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let ly = |v: f64| {
        let v = v.max(10f64.powi(d0)).log10();
        LAT.3 - (v - d0 as f64) / (d1 - d0) as f64 * (LAT.3 - LAT.1)
    };
    for d in d0..=d1 {
        hline(&mut s, LAT, ly(10f64.powi(d)), &fmt_us(10f64.powi(d)));
    }
    frame(&mut s, LAT, "request latency (log scale)");
    x.ticks(&mut s, LAT);
    let pick = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (x.at(LAT, r.nodes), ly(f(r))))
            .collect()
    };
    line(&mut s, &pick(|r| r.first.0), BLUE, "");
    line(&mut s, &pick(|r| r.first.1), BLUE, "6 4");
    line(&mut s, &pick(|r| r.again.0), ORANGE, "");
    line(&mut s, &pick(|r| r.again.1), ORANGE, "6 4");

    // Hops panel: linear y from 0.
    let top = rows
        .iter()
        .flat_map(|r| [r.hops.1, (r.nodes as f64).log2() / 2.0])
        .fold(1.0, f64::max)
        .ceil();
    let hy = |v: f64| HOPS.3 - v / top * (HOPS.3 - HOPS.1);
    let step = if top > 8.0 { 2.0 } else { 1.0 };
    let mut v = 0.0;
    while v <= top {
        hline(&mut s, HOPS, hy(v), &format!("{v}"));
        v += step;
    }
    frame(&mut s, HOPS, "lookup hops");
    x.ticks(&mut s, HOPS);
    let reference: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (x.at(HOPS, r.nodes), hy((r.nodes as f64).log2() / 2.0)))
        .collect();
    line(&mut s, &reference, GREY, "2 3");
    let pick = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .map(|r| (x.at(HOPS, r.nodes), hy(f(r))))
            .collect()
    };
    line(&mut s, &pick(|r| r.hops.0), GREEN, "");
    line(&mut s, &pick(|r| r.hops.1), GREEN, "6 4");

    // Legend.
    let legend = [
        (BLUE, "", "first request, median"),
        (BLUE, "6 4", "first request, p99"),
        (ORANGE, "", "same pair again, median"),
        (ORANGE, "6 4", "same pair again, p99"),
        (GREEN, "", "hops, mean"),
        (GREEN, "6 4", "hops, p99"),
        (GREY, "2 3", "log2(N) / 2"),
    ];
    for (i, (color, dash, label)) in legend.iter().enumerate() {
        let (lx, ly) = (20.0 + (i % 4) as f64 * 190.0, 395.0 + (i / 4) as f64 * 22.0);
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{}">{label}</text>"##,
            lx + 30.0,
            dash_attr(dash),
            lx + 36.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The ring size on a log2 axis.
struct XAxis {
    lo: f64,
    hi: f64,
    sizes: Vec<usize>,
}

impl XAxis {
    fn of(rows: &[Row]) -> XAxis {
        let sizes: Vec<usize> = rows.iter().map(|r| r.nodes.max(1)).collect();
        let lo = (sizes[0] as f64).log2();
        let hi = (sizes[sizes.len() - 1] as f64).log2();
        // Half a doubling of margin on each side.
        XAxis {
            lo: lo - 0.5,
            hi: hi.max(lo) + 0.5,
            sizes,
        }
    }

    fn at(&self, p: (f64, f64, f64, f64), n: usize) -> f64 {
        let v = (n.max(1) as f64).log2();
        p.0 + (v - self.lo) / (self.hi - self.lo) * (p.2 - p.0)
    }

    fn ticks(&self, s: &mut String, p: (f64, f64, f64, f64)) {
        for &n in &self.sizes {
            let x = self.at(p, n);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{n}</text>"##,
                p.3,
                p.3 + 5.0,
                p.3 + 18.0
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">nodes in the ring (log2 scale)</text>"##,
            (p.0 + p.2) / 2.0,
            p.3 + 36.0
        );
    }
}

/// The plot area's box (over its grid lines) and its y-axis label.
fn frame(s: &mut String, p: (f64, f64, f64, f64), label: &str) {
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        p.0,
        p.1,
        p.2 - p.0,
        p.3 - p.1
    );
    let (x, y) = (p.0 - 50.0, (p.1 + p.3) / 2.0);
    let _ = writeln!(
        s,
        r##"<text x="{x}" y="{y}" text-anchor="middle" transform="rotate(-90 {x} {y})">{label}</text>"##
    );
}

/// A grid line across the plot area at `y`, labelled on the left.
fn hline(s: &mut String, p: (f64, f64, f64, f64), y: f64, label: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
        p.0,
        p.2,
        p.0 - 6.0,
        y + 4.0
    );
}

/// A polyline through `pts` with a dot at each.
fn line(s: &mut String, pts: &[(f64, f64)], color: &str, dash: &str) {
    let d: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{}/>"##,
        d.join(" "),
        dash_attr(dash)
    );
    for (x, y) in pts {
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"##
        );
    }
}

fn dash_attr(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(r##" stroke-dasharray="{dash}""##)
    }
}

/// A decade of µs as text: 1 µs, 10 µs, ..., 1 ms, 10 ms, 1 s.
fn fmt_us(v: f64) -> String {
    if v >= 1e6 {
        format!("{} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{} ms", v / 1e3)
    } else {
        format!("{v} µs")
    }
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
