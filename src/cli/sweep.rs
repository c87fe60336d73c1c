//! `trainyard sweep`: queue a sweep (a grid, a random search, an ablation) from a file,
//! or look at one by its id; `--follow` waits for every child, then prints the ranking.
//!
//! The ranking is the service's (`GET /sweeps/{id}`): this prints it, it does not
//! compute it, so the command line and the web app can never disagree about which point
//! won or which difference mattered.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use super::remote::Remote;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The sweep (a JSON file; `-` reads standard input): `base` with `grid` or `random`,
    /// or `ablate`, and `repeats` (see the book: docs/guide/sweeps.md).
    #[arg(required_unless_present = "id", conflicts_with = "id")]
    pub file: Option<PathBuf>,
    /// An existing sweep to show (or, with --follow, to wait for).
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// Wait until every child has ended, printing progress, then print the ranking.
    #[arg(long)]
    pub follow: bool,
    /// Cancel every child of the sweep given by --id that has not ended.
    #[arg(long, requires = "id")]
    pub cancel: bool,
    /// What to call it (the file's `name` otherwise).
    #[arg(long)]
    pub name: Option<String>,
    /// Also save each point's mean loss curve with its band as FILE.svg or FILE.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    let mut sweep = match (&a.file, a.id) {
        (Some(file), _) => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let mut body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            if let Some(n) = &a.name {
                body["name"] = json!(n);
            }
            let s = a.remote.json("POST", "/sweeps", Some(&body))?;
            println!(
                "{} {} sweep: {} children queued",
                s["id"].as_str().unwrap_or("?"),
                s["kind"].as_str().unwrap_or("?"),
                s["children"].as_array().map_or(0, Vec::len)
            );
            for skipped in s["skipped"].as_array().into_iter().flatten() {
                println!(
                    "  not tried: {} ({})",
                    skipped["path"].as_str().unwrap_or(""),
                    skipped["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| format!(
                            "{}: {}",
                            e["field"].as_str().unwrap_or(""),
                            e["reason"].as_str().unwrap_or("")
                        ))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            s
        }
        (None, Some(id)) if a.cancel => {
            a.remote
                .json("POST", &format!("/sweeps/{id}/cancel"), None)?
        }
        (None, Some(id)) => a.remote.get_json(&format!("/sweeps/{id}"))?,
        (None, None) => anyhow::bail!("give a sweep file, or --id"),
    };
    let id = sweep["id"].as_str().unwrap_or_default().to_string();
    if a.follow {
        let mut last = String::new();
        loop {
            let line = progress(&sweep);
            if line != last {
                println!("{} {line}", chrono::Utc::now().format("%H:%M:%S"));
                last = line;
            }
            if sweep["state"] == "finished" {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
            sweep = a.remote.get_json(&format!("/sweeps/{id}"))?;
        }
    } else if a.file.is_none() {
        println!("{id}: {}", progress(&sweep));
    }
    if a.follow || a.file.is_none() {
        print!("{}", ranking_text(&sweep));
    }
    if let Some(out) = &a.out {
        a.remote
            .save_picture(&format!("/sweeps/{id}/curve"), "", out)?;
        println!("saved {}", out.display());
    }
    let failed = sweep["counts"]["failed"].as_i64().unwrap_or(0);
    if a.follow && failed > 0 {
        anyhow::bail!("{failed} children failed (`trainyard show ID` says why)");
    }
    Ok(())
}

/// `4/18 ended (4 succeeded), 2 running, 12 queued`.
fn progress(sweep: &Value) -> String {
    let n = |s: &str| sweep["counts"][s].as_i64().unwrap_or(0);
    let total: i64 = sweep["counts"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_i64).sum());
    let ended = n("succeeded") + n("failed") + n("cancelled");
    let mut how: Vec<String> = ["succeeded", "failed", "cancelled"]
        .iter()
        .filter(|s| n(s) > 0)
        .map(|s| format!("{} {s}", n(s)))
        .collect();
    if how.is_empty() {
        how.push("none yet".into());
    }
    format!(
        "{ended}/{total} ended ({}), {} running, {} queued",
        how.join(", "),
        n("running"),
        n("queued")
    )
}

/// `mean ± std` (or the one value, or `-`).
fn spread(s: &Value) -> String {
    match (s["mean"].as_f64(), s["std"].as_f64()) {
        (Some(m), Some(d)) => format!("{m:.4} ± {d:.4}"),
        (Some(m), None) => format!("{m:.4}"),
        _ => "-".into(),
    }
}

/// A share as percent: `41% ± 10%`.
fn share(s: &Value) -> String {
    match (s["mean"].as_f64(), s["std"].as_f64()) {
        (Some(m), Some(d)) => format!("{:.0}% ± {:.0}%", m * 100.0, d * 100.0),
        (Some(m), None) => format!("{:.0}%", m * 100.0),
        _ => "-".into(),
    }
}

/// A value short enough for a table cell.
fn brief(v: &Value) -> String {
    match v {
        Value::Array(a) if a.iter().any(Value::is_object) => format!("({} layers)", a.len()),
        Value::Null => "(none)".into(),
        v => {
            let t = v.to_string();
            if t.chars().count() > 30 {
                format!("{}…", t.chars().take(29).collect::<String>())
            } else {
                t
            }
        }
    }
}

/// The ranking (a grid or random search) or the ablation's effects, as a table.
pub fn ranking_text(sweep: &Value) -> String {
    let metric = sweep["metric"].as_str().unwrap_or("?");
    let mut out = String::new();
    if let Some(ranking) = sweep["ranking"].as_array() {
        out.push_str(&format!(
            "\n{:>4}  {:<48} {:>3}  {metric} (mean ± std)\n",
            "rank", "point", "n"
        ));
        for r in ranking {
            out.push_str(&format!(
                "{:>4}  {:<48} {:>3}  {}\n",
                r["rank"].as_u64().map_or("-".into(), |r| r.to_string()),
                r["label"].as_str().unwrap_or(""),
                r["metric"]["n"],
                spread(&r["metric"])
            ));
        }
    }
    if let Some(ab) = sweep["ablation"].as_object() {
        let acc = ab["baseline_from"]["accuracy"].clone();
        let accuracy = ab["differences"][0]["accuracy"]["metric"]
            .as_str()
            .unwrap_or("accuracy");
        out.push_str(&format!(
            "\nA {}: {metric} {}, {accuracy} {}\nB {}: {metric} {}, {accuracy} {}\n",
            ab["from"].as_str().unwrap_or("?"),
            spread(&ab["baseline_from"]["loss"]),
            spread(&acc),
            ab["to"].as_str().unwrap_or("?"),
            spread(&ab["baseline_to"]["loss"]),
            spread(&ab["baseline_to"]["accuracy"]),
        ));
        out.push_str(&format!(
            "\n{:>4}  {:<20} {:<44} {:>20} {:>18} {:>20}\n",
            "rank",
            "difference",
            "A -> B",
            format!("Δ {metric}"),
            "share of A→B gap",
            format!("Δ {accuracy}")
        ));
        for d in ab["differences"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{:>4}  {:<20} {:<44} {:>20} {:>18} {:>20}\n",
                d["rank"].as_u64().map_or("-".into(), |r| r.to_string()),
                d["path"].as_str().unwrap_or(""),
                format!("{} -> {}", brief(&d["from"]), brief(&d["to"])),
                spread(&d["loss"]["delta"]),
                share(&d["loss"]["fraction"]),
                spread(&d["accuracy"]["delta"]),
            ));
        }
    }
    out
}
