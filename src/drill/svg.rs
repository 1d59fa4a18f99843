//! `pgha drill … --timeline FILE.svg`: each repetition drawn the way it would go into a
//! postmortem. Time runs left to right from just before the fault; rows show which node held
//! the leader key, every write attempt of both clients (acknowledged, slow, failed), and the
//! phases as marked moments. A plain SVG file, no script, no external reference.

use std::fmt::Write;

use super::phases::Phases;
use super::probe::{WriteAttempt, WriteClient};

/// What one repetition's drawing needs.
#[derive(Debug, Clone, Default)]
pub struct Panel {
    pub title: String,
    pub fault_ms: u64,
    pub writes: Vec<WriteAttempt>,
    /// Who held the leader key, from when (ms on the probes' clock; `""`: nobody).
    pub leaders: Vec<(i64, String)>,
    pub phases: Phases,
}

/// An acknowledged write slower than this is drawn as slow.
const SLOW_MS: u64 = 1000;
const WIDTH: f64 = 1000.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;
const PANEL_HEIGHT: f64 = 200.0;
const PALETTE: [&str; 5] = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document of `panels`, one below the other.
pub fn render(scenario: &str, panels: &[Panel]) -> String {
    let height = 50.0 + PANEL_HEIGHT * panels.len() as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">pgha drill {}</text>"#,
        escape(scenario)
    );
    let legend = [
        ("#2ca02c", "acknowledged"),
        ("#ff9f1c", "acknowledged, slow (≥ 1 s)"),
        ("#d62728", "failed"),
    ];
    for (index, (color, label)) in legend.iter().enumerate() {
        let x = 300.0 + 190.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="11" width="10" height="10" fill="{color}"/><text x="{}" y="20">{}</text>"#,
            x + 14.0,
            escape(label)
        );
    }
    let mut nodes: Vec<String> = Vec::new();
    for (index, panel) in panels.iter().enumerate() {
        draw_panel(
            &mut svg,
            panel,
            40.0 + PANEL_HEIGHT * index as f64,
            &mut nodes,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, top: f64, nodes: &mut Vec<String>) {
    let fault = panel.fault_ms as i64;
    let start = fault - 3000;
    let end = panel
        .writes
        .iter()
        .map(|attempt| attempt.ended_ms as i64)
        .max()
        .unwrap_or(fault + 10_000)
        .max(fault + 5000);
    let span = (end - start).max(1) as f64;
    let x = |ms: i64| LEFT + (ms.clamp(start, end) - start) as f64 / span * (WIDTH - LEFT - RIGHT);
    let _ = writeln!(
        svg,
        r#"<g class="repetition"><text x="10" y="{}" font-size="12" font-weight="bold">{}</text>"#,
        top + 12.0,
        escape(&panel.title)
    );
    // Rows.
    let rows = [
        ("leader key", 25.0),
        ("new connection", 50.0),
        ("persistent", 70.0),
    ];
    for (label, offset) in rows {
        let _ = writeln!(
            svg,
            r#"<text x="10" y="{}">{label}</text>"#,
            top + offset + 9.0
        );
    }
    // Who held the leader key.
    for (index, (from, leader)) in panel.leaders.iter().enumerate() {
        let to = panel.leaders.get(index + 1).map_or(end, |(next, _)| *next);
        if to < start || leader.is_empty() {
            continue;
        }
        let position = nodes
            .iter()
            .position(|node| node == leader)
            .unwrap_or_else(|| {
                nodes.push(leader.clone());
                nodes.len() - 1
            });
        let color = PALETTE[position % PALETTE.len()];
        let (x0, x1) = (x(*from), x(to));
        let _ = writeln!(
            svg,
            r#"<rect class="leader" x="{x0:.1}" y="{}" width="{:.1}" height="12" fill="{color}"><title>{} leads</title></rect><text x="{:.1}" y="{}" fill="white">{}</text>"#,
            top + 24.0,
            (x1 - x0).max(1.0),
            escape(leader),
            x0 + 3.0,
            top + 34.0,
            escape(leader)
        );
    }
    // Every write attempt.
    for attempt in &panel.writes {
        let offset = match attempt.client {
            WriteClient::NewConnection => 50.0,
            WriteClient::Persistent => 70.0,
            WriteClient::Isolated => continue,
        };
        let took = attempt.ended_ms.saturating_sub(attempt.started_ms);
        let color = match (attempt.acknowledged, took >= SLOW_MS) {
            (true, false) => "#2ca02c",
            (true, true) => "#ff9f1c",
            (false, _) => "#d62728",
        };
        let (x0, x1) = (x(attempt.started_ms as i64), x(attempt.ended_ms as i64));
        let what = if attempt.acknowledged {
            format!("acknowledged in {took} ms")
        } else {
            format!(
                "failed after {took} ms: {}",
                attempt.error.as_deref().unwrap_or("")
            )
        };
        let _ = writeln!(
            svg,
            r#"<rect class="write" x="{x0:.1}" y="{}" width="{:.1}" height="10" fill="{color}" fill-opacity="0.8"><title>{}</title></rect>"#,
            top + offset,
            (x1 - x0).max(1.0),
            escape(&what)
        );
    }
    // Time axis, every 5 s from the fault.
    let axis = top + 92.0;
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{axis}" x2="{}" y2="{axis}" stroke="#888"/>"##,
        WIDTH - RIGHT
    );
    let mut tick = 0;
    while fault + tick * 1000 <= end {
        let at = x(fault + tick * 1000);
        let _ = writeln!(
            svg,
            r##"<line x1="{at:.1}" y1="{axis}" x2="{at:.1}" y2="{}" stroke="#888"/><text x="{at:.1}" y="{}" text-anchor="middle" fill="#555">{tick} s</text>"##,
            axis + 4.0,
            axis + 15.0
        );
        tick += 5;
    }
    // The fault and the phases.
    let mut marks = vec![("fault".to_string(), Some(0u64))];
    marks.extend(
        panel
            .phases
            .marks()
            .into_iter()
            .map(|(label, ms)| (label.to_string(), ms)),
    );
    for (index, (label, ms)) in marks.iter().enumerate() {
        let Some(ms) = ms else { continue };
        let at = x(fault + *ms as i64);
        let color = if index == 0 { "#000" } else { "#6a3d9a" };
        let text_y = top + 112.0 + 12.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<g class="phase"><line x1="{at:.1}" y1="{}" x2="{at:.1}" y2="{}" stroke="{color}" stroke-dasharray="3,2"/><text x="{:.1}" y="{text_y}" fill="{color}">{} +{:.2} s</text></g>"#,
            top + 20.0,
            text_y - 9.0,
            at + 3.0,
            escape(label),
            *ms as f64 / 1000.0
        );
    }
    svg.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(started_ms: u64, ended_ms: u64, acknowledged: bool) -> WriteAttempt {
        WriteAttempt {
            id: started_ms as i64,
            client: WriteClient::NewConnection,
            started_ms,
            ended_ms,
            connected: acknowledged,
            acknowledged,
            error: (!acknowledged).then(|| "connection refused <&>".to_string()),
        }
    }

    #[test]
    fn every_attempt_phase_and_leader_is_drawn_and_text_is_escaped() {
        let panel = Panel {
            title: "repetition 1: kill-primary on node1".into(),
            fault_ms: 2000,
            writes: vec![
                attempt(1000, 1010, true),
                attempt(2100, 3600, false),
                attempt(3700, 4900, true),
            ],
            leaders: vec![
                (0, "node1".into()),
                (2500, String::new()),
                (3000, "node2".into()),
            ],
            phases: Phases {
                leader_key_changed_ms: Some(500),
                new_leader_running_ms: Some(1000),
                first_write_ms: Some(2900),
                ..Phases::default()
            },
        };
        let svg = render("kill-primary", &[panel]);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"write\"").count(), 3);
        assert_eq!(svg.matches("class=\"leader\"").count(), 2);
        // The fault and three phases seen.
        assert_eq!(svg.matches("class=\"phase\"").count(), 4);
        assert!(svg.contains("first write +2.90 s"));
        assert!(svg.contains("#ff9f1c"), "the slow acknowledgement");
        assert!(svg.contains("connection refused &lt;&amp;&gt;"));
        assert!(!svg.contains("<&>"));
    }
}
