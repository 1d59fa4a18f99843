//! `pgha drill`: arguments for the failure drills and the rendering of their report (a table
//! on stdout, or JSON with `--json`); the work is in [`crate::drill`].

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::drill::{self, DrillOptions, DrillReport, Scenario};
use crate::error::UserError;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Inventory file
    #[arg(short, long)]
    inventory: PathBuf,
    /// switchover, kill-primary, kill-postgres, partition-primary, freeze-primary, kill-haproxy
    scenario: String,
    /// Run the drill this many times and summarise (median, worst)
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print the report as JSON on stdout
    #[arg(long)]
    json: bool,
    /// Confirm a drill on real hosts (not the lab) without a prompt
    #[arg(long)]
    yes: bool,
    /// Draw every repetition into this SVG file (write attempts over time, the phases, who led)
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,
}

pub fn run(args: DrillArgs) -> anyhow::Result<()> {
    let scenario: Scenario = args.scenario.parse()?;
    let confirmed_real_hosts = args.yes || confirm_on_tty(scenario)?;
    let options = DrillOptions {
        inventory: args.inventory,
        scenario,
        repeat: args.repeat,
        confirmed_real_hosts,
        progress: Box::new(|message| eprintln!("{message}")),
    };
    let report = super::run::runtime()?.block_on(drill::run(options))?;
    if let Some(path) = &args.timeline {
        let panels: Vec<drill::svg::Panel> =
            report.runs.iter().map(|run| run.panel.clone()).collect();
        std::fs::write(path, drill::svg::render(scenario.name(), &panels))
            .with_context(|| format!("cannot write the timeline `{}`", path.display()))?;
        eprintln!(
            "timeline of {} repetition(s) in {}",
            panels.len(),
            path.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if let Some(error) = &report.error {
        bail!("the drill did not complete: {error}");
    }
    if !report.summary.passed {
        bail!("the drill `{scenario}` failed its verdict (see `problems`)");
    }
    Ok(())
}

/// On a TTY, ask before a drill that might run on real hosts; elsewhere `--yes` is the only
/// confirmation (the operation refuses real hosts without one).
fn confirm_on_tty(scenario: Scenario) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    eprint!("the drill `{scenario}` breaks the cluster on purpose; continue on real hosts? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes");
    if !yes {
        bail!(UserError("not confirmed; nothing was changed".into()));
    }
    Ok(true)
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

fn print_table(report: &DrillReport) {
    let expected = &report.expected;
    println!(
        "drill `{}` on `{}` (profile {}, synchronous_mode {}, {})",
        report.scenario,
        report.cluster,
        report.profile,
        if report.synchronous_mode { "on" } else { "off" },
        if report.lab { "lab" } else { "real hosts" }
    );
    println!(
        "model: outage {}–{} s (avg {} s)",
        seconds(expected.min_ms),
        seconds(expected.max_ms),
        seconds(expected.avg_ms)
    );
    println!(
        "{:<4} {:<7} {:<7} {:>9} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:<7}",
        "RUN",
        "OLD",
        "NEW",
        "OUTAGE_S",
        "LOST",
        "DOUBLE",
        "FENCED",
        "TIMELINE",
        "FAILED",
        "STREAM_S",
        "VERDICT"
    );
    for run in &report.runs {
        let timeline = match (run.timeline_before, run.timeline_after) {
            (Some(before), Some(after)) => format!("{before}→{after}"),
            _ => "?".into(),
        };
        println!(
            "{:<4} {:<7} {:<7} {:>9} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:<7}",
            run.repetition,
            run.old_primary,
            run.new_primary.as_deref().unwrap_or("?"),
            seconds(run.outage_ms),
            run.acknowledged_writes_lost,
            run.double_primary_moments,
            run.fenced_primary_moments,
            timeline,
            format!("{}/{}", run.failed_writes, run.writes),
            run.old_primary_streaming_after_ms
                .map_or("-".into(), seconds),
            if run.passed { "pass" } else { "FAIL" }
        );
        let phases: Vec<String> = run
            .phases
            .marks()
            .into_iter()
            .map(|(label, ms)| {
                format!(
                    "{label} {}",
                    ms.map_or("-".into(), |ms| format!("+{}", seconds(ms)))
                )
            })
            .collect();
        println!("     phases (s after the fault): {}", phases.join(", "));
        for problem in &run.problems {
            println!("     problem: {problem}");
        }
    }
    let summary = &report.summary;
    println!(
        "summary: {} run(s), outage median {} s, worst {} s; acknowledged writes lost {}; double-primary moments {}; fenced old-primary moments {}; {}",
        summary.repetitions,
        seconds(summary.median_outage_ms),
        seconds(summary.worst_outage_ms),
        summary.acknowledged_writes_lost,
        summary.double_primary_moments,
        summary.fenced_primary_moments,
        if summary.passed { "pass" } else { "FAIL" }
    );
    let medians: Vec<String> = summary
        .phase_medians
        .iter()
        .map(|phase| {
            format!(
                "{} {}",
                phase.phase,
                phase
                    .median_ms
                    .map_or("-".into(), |ms| format!("+{}", seconds(ms)))
            )
        })
        .collect();
    println!("phase medians (s after the fault): {}", medians.join(", "));
}
