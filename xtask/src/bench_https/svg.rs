//! The chart of `target/bench/https.svg`, drawn by hand: stacked panels of grouped bars (one
//! group per workload, one bar per proxy, each labelled with its value) and a legend.
use std::fmt::Write as _;

use super::report::thousands;
use super::{Cell, PROXIES, Results};

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
/// Above the plot: the panel title. Below: the group labels (two lines).
const TOP: f64 = 40.0;
const BOTTOM: f64 = 64.0;
/// Characters per line of a group label and of the footer.
const LABEL_CHARS: usize = 20;
const FOOTER_CHARS: usize = 150;
const COLORS: [&str; 3] = ["#d9480f", "#1c7ed6", "#5c940d"];

/// One panel: a title and groups of up to three values (edgelb, nginx, haproxy).
pub struct Panel {
    pub title: String,
    pub groups: Vec<(String, [Option<f64>; 3])>,
}

pub fn chart(r: &Results, about: &str) -> String {
    let per_workload = |title: &str, value: fn(&Cell) -> f64| Panel {
        title: title.into(),
        groups: r
            .workloads
            .iter()
            .enumerate()
            .map(|(wi, w)| {
                (
                    w.name.to_string(),
                    [0, 1, 2].map(|p| r.median(wi, p, value)),
                )
            })
            .collect(),
    };
    let mut panels = vec![
        per_workload("Requests/s (2xx)", |c| c.ok_per_sec),
        per_workload("Requests per CPU-second of the proxy", |c| c.ok_per_cpu_sec),
    ];
    if let Some(m) = &r.memory {
        let mib =
            |f: fn(&super::memory::Memory) -> u64| m.map(|m| m.map(|m| f(&m) as f64 / 1024.0));
        panels.push(Panel {
            title: format!(
                "RSS in MiB, fresh and holding {} idle TLS connections",
                r.memory_conns
            ),
            groups: vec![
                ("fresh".into(), mib(|m| m.fresh_kib)),
                (
                    format!("{} idle connections", r.memory_conns),
                    mib(|m| m.loaded_kib),
                ),
            ],
        });
    }
    render(&panels, about)
}

pub fn render(panels: &[Panel], footer: &str) -> String {
    let legend_h = 30.0;
    let footer_lines = wrap(footer, " · ", FOOTER_CHARS);
    let height =
        legend_h + panels.len() as f64 * PANEL_HEIGHT + 14.0 * footer_lines.len() as f64 + 16.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    legend(&mut s);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut s, panel, legend_h + i as f64 * PANEL_HEIGHT);
    }
    for (i, line) in footer_lines.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{}" font-size="10" fill="#555">{}</text>"##,
            legend_h + panels.len() as f64 * PANEL_HEIGHT + 14.0 * i as f64 + 6.0,
            escape(line)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn legend(s: &mut String) {
    for (i, p) in PROXIES.iter().enumerate() {
        let x = LEFT + i as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="10" width="14" height="14" fill="{}"/><text x="{}" y="22">{}</text>"#,
            COLORS[i],
            x + 20.0,
            p.name()
        );
    }
}

fn draw_panel(s: &mut String, panel: &Panel, y0: f64) {
    let plot_top = y0 + TOP;
    let plot_h = PANEL_HEIGHT - TOP - BOTTOM;
    let plot_w = WIDTH - LEFT - RIGHT;
    let base = plot_top + plot_h;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        y0 + 24.0,
        escape(&panel.title)
    );
    let max = panel
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = nice_ceiling(max);
    // Grid lines and their values: 0, 1/4, ... of the axis.
    for k in 0..=4 {
        let v = top * f64::from(k) / 4.0;
        let y = base - plot_h * f64::from(k) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            axis_label(v)
        );
    }
    let n = panel.groups.len().max(1) as f64;
    let group_w = plot_w / n;
    let bar_w = (group_w * 0.8 / 3.0).min(60.0);
    for (g, (label, values)) in panel.groups.iter().enumerate() {
        let center = LEFT + group_w * (g as f64 + 0.5);
        let first = center - bar_w * 1.5;
        for (i, v) in values.iter().enumerate() {
            let x = first + bar_w * i as f64;
            let Some(v) = v else {
                let _ = writeln!(
                    s,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#888">n/a</text>"##,
                    x + bar_w / 2.0,
                    base - 4.0
                );
                continue;
            };
            let h = if top > 0.0 { plot_h * v / top } else { 0.0 };
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                base - h,
                bar_w - 2.0,
                COLORS[i],
                PROXIES[i].name(),
                value_label(*v)
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                x + bar_w / 2.0 - 1.0,
                base - h - 3.0,
                value_label(*v)
            );
        }
        // The workload's name under its group, wrapped to fit.
        for (line, text) in wrap(label, " ", LABEL_CHARS).iter().take(3).enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{center:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                base + 16.0 + 14.0 * line as f64,
                escape(text)
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#333"/>"##,
        LEFT + plot_w
    );
}

/// Splits `text` at `sep` into lines of at most `width` characters (longer words stay whole).
fn wrap(text: &str, sep: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(sep) {
        match lines.last_mut() {
            Some(line) if line.chars().count() + sep.len() + word.chars().count() <= width => {
                line.push_str(sep);
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `max` (the axis top).
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn axis_label(v: f64) -> String {
    if v >= 1000.0 {
        thousands(v)
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn value_label(v: f64) -> String {
    if v >= 100.0 {
        thousands(v)
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_well_formed_svg() {
        let panels = vec![Panel {
            title: "Requests/s <2xx> & more".into(),
            groups: vec![
                (
                    "HTTP/1.1 keep-alive".into(),
                    [Some(37674.0), Some(43528.0), None],
                ),
                (
                    "new TLS conn, 100k".into(),
                    [Some(3556.0), Some(0.5), Some(2893.0)],
                ),
            ],
        }];
        let svg = render(&panels, "2026-01-01 · \"machine\"");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("37,674") && svg.contains("n/a") && svg.contains("0.5"));
        assert!(svg.contains("Requests/s &lt;2xx&gt; &amp; more"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        // Every element opened is closed: count tags on a crude tokenizer.
        let mut depth = 0i32;
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap();
            if tag.starts_with('/') {
                depth -= 1;
            } else if !tag.ends_with('/') {
                depth += 1;
            }
            assert!(depth >= 0, "closing tag without opening: {tag}");
        }
        assert_eq!(depth, 0);
        // Five bars (one missing), each with a value label.
        assert_eq!(svg.matches("<rect").count(), 1 + 3 + 5);
    }

    #[test]
    fn wraps_labels() {
        assert_eq!(
            wrap("new TLS conn per request, 100k-prefix deny list", " ", 20),
            ["new TLS conn per", "request, 100k-prefix", "deny list"]
        );
        assert_eq!(
            wrap("HTTP/1.1 keep-alive", " ", 19),
            ["HTTP/1.1 keep-alive"]
        );
        assert_eq!(wrap("a · b", " · ", 150), ["a · b"]);
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(43_528.0), 50_000.0);
        assert_eq!(nice_ceiling(76_497.0), 100_000.0);
        assert_eq!(nice_ceiling(2_100.0), 2_500.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
    }
}
