//! The service's client commands: `submit`, `ls`, `show`, `follow`, `cancel`, `download`
//! and `compare`, against `--server` / `TRAINYARD_SERVER` with `TRAINYARD_API_KEY`.
//!
//! `follow` reads the curve stream and prints what the local `train` prints: a progress
//! bar for the running epoch and a table row per finished one (the same row, from the
//! same code). A dropped connection is taken up again with `Last-Event-ID`, which the
//! service answers with exactly the events after it, so no row is lost or printed twice.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::remote::Remote;
use super::train::{print_header, print_row};
use crate::engine::EpochMetrics;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The spec (a JSON file; `-` reads standard input).
    pub spec: PathBuf,
    /// Follow the run to its end, as `follow` does.
    #[arg(long)]
    pub follow: bool,
    /// What to call it (the spec file's `name` otherwise).
    #[arg(long)]
    pub name: Option<String>,
    /// Queue priority within the account, -100 to 100.
    #[arg(long)]
    pub priority: Option<i32>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only experiments in this status (queued, running, succeeded, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Only experiments with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// How many, newest first (1 to 100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: u32,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The experiment's id.
    pub id: uuid::Uuid,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The experiment's id.
    pub id: uuid::Uuid,
    /// `best`, `last` or an epoch number.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// Where to write the safetensors file (default: `<id>-<checkpoint>.safetensors`).
    #[arg(short = 'o', long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Two to eight experiment ids.
    #[arg(num_args = 2..=8, required = true)]
    pub ids: Vec<uuid::Uuid>,
    /// Also save the overlaid curves as FILE.svg or FILE.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub remote: Remote,
}

pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let text = if a.spec.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&a.spec).with_context(|| format!("reading {}", a.spec.display()))?
    };
    let mut spec: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", a.spec.display()))?;
    if let Some(n) = &a.name {
        spec["name"] = json!(n);
    }
    let path = match a.priority {
        Some(p) => format!("/experiments?priority={p}"),
        None => "/experiments".to_string(),
    };
    let e = a.remote.json("POST", &path, Some(&spec))?;
    let id = e["id"].as_str().unwrap_or("?").to_string();
    println!(
        "{id} {} ({} parameters, {} epochs)",
        e["status"].as_str().unwrap_or("?"),
        e["model"]["parameters"],
        e["epochs"]
    );
    if a.follow {
        let id = id.parse().context("the service answered without an id")?;
        return follow_run(&a.remote, id);
    }
    Ok(())
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    let mut path = format!("/experiments?limit={}", a.limit);
    for (k, v) in [("status", &a.status), ("tag", &a.tag)] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={}", urlencode(v)));
        }
    }
    let page = a.remote.get_json(&path)?;
    println!(
        "{:<36} {:<10} {:>7} {:>8} {:>8}  name",
        "id", "status", "epochs", "val_acc", "test_acc"
    );
    for e in page["items"].as_array().into_iter().flatten() {
        println!(
            "{:<36} {:<10} {:>7} {:>8} {:>8}  {}",
            e["id"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or(""),
            format!("{}/{}", e["epochs_done"], e["epochs"]),
            pct(&e["best_val_accuracy"]),
            pct(&e["best_test_accuracy"]),
            e["name"].as_str().unwrap_or("")
        );
    }
    if page.get("next_cursor").is_some() {
        println!("(more: raise --limit, or filter by --status or --tag)");
    }
    Ok(())
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn show(a: IdArgs) -> anyhow::Result<()> {
    let e = a.remote.get_json(&format!("/experiments/{}", a.id))?;
    let s = |k: &str| match &e[k] {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    println!("{} {}", s("id"), e["name"].as_str().unwrap_or(""));
    println!("status      {}", s("status"));
    if let Some(err) = e["error"].as_str() {
        println!("error       {err}");
    }
    if e["stop_reason"].is_string() {
        println!(
            "stopped     {} after epoch {}",
            s("stop_reason"),
            s("stopped_epoch")
        );
    }
    println!("epochs      {} of {}", s("epochs_done"), s("epochs"));
    println!("best epoch  {}", s("best_epoch"));
    println!("created     {}", s("created_at"));
    println!("finished    {}", s("finished_at"));
    let metrics = a
        .remote
        .get_json(&format!("/experiments/{}/metrics", a.id))?;
    let rows: Vec<EpochMetrics> = serde_json::from_value(metrics)?;
    if !rows.is_empty() {
        println!();
        print_header();
        for m in &rows {
            print_row(m);
        }
    }
    Ok(())
}

pub fn cancel(a: IdArgs) -> anyhow::Result<()> {
    let e = a
        .remote
        .json("POST", &format!("/experiments/{}/cancel", a.id), None)?;
    println!(
        "{} {}{}",
        a.id,
        e["status"].as_str().unwrap_or("?"),
        if e["cancel_requested"] == true && e["status"] == "running" {
            " (stops at the next batch)"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn download(a: DownloadArgs) -> anyhow::Result<()> {
    let agent = a.remote.agent(Some(Duration::from_secs(300)));
    let path = format!("/experiments/{}/checkpoints/{}", a.id, a.checkpoint);
    let r = a
        .remote
        .send(a.remote.request(&agent, "GET", &path), None)?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.safetensors", a.id, a.checkpoint)));
    let mut file =
        std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    let n = std::io::copy(&mut r.into_reader(), &mut file)?;
    file.flush()?;
    println!("{} ({n} bytes)", out.display());
    Ok(())
}

pub fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let ids: Vec<String> = a.ids.iter().map(|i| i.to_string()).collect();
    let query = format!("ids={}", ids.join(","));
    let c = a.remote.get_json(&format!("/compare?{query}"))?;
    println!(
        "{:<36} {:>7} {:>9} {:>9}  name",
        "id", "epochs", "val_loss", "test_acc"
    );
    for e in c["experiments"].as_array().into_iter().flatten() {
        let last = e["metrics"].as_array().and_then(|m| m.last()).cloned();
        let last = last.unwrap_or(Value::Null);
        println!(
            "{:<36} {:>7} {:>9} {:>9}  {}",
            e["id"].as_str().unwrap_or(""),
            e["epochs_done"],
            last["val_loss"]
                .as_f64()
                .map_or_else(|| "-".into(), |v| format!("{v:.4}")),
            pct(&last["test_accuracy"]),
            e["name"].as_str().unwrap_or("")
        );
    }
    for d in c["diff"].as_array().into_iter().flatten() {
        println!(
            "{}: {}",
            d["path"].as_str().unwrap_or(""),
            d["values"]
                .as_array()
                .map(|v| v
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(" | "))
                .unwrap_or_default()
        );
    }
    if let Some(out) = &a.out {
        a.remote.save_picture("/compare", &query, out)?;
        println!("{}", out.display());
    }
    Ok(())
}

pub fn follow(a: IdArgs) -> anyhow::Result<()> {
    follow_run(&a.remote, a.id)
}

/// One server-sent event as it arrives.
#[derive(Default)]
struct Event {
    kind: String,
    id: Option<String>,
    data: String,
}

/// Follows an experiment's curve to its end: a table row per epoch, a bar for the
/// running one. Exits non-zero when the run failed or was cancelled.
fn follow_run(remote: &Remote, id: uuid::Uuid) -> anyhow::Result<()> {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} batches, loss {msg}")
            .expect("a valid template"),
    );
    let mut last_id: Option<String> = None;
    let mut header = false;
    let mut down_since: Option<Instant> = None;
    loop {
        // The stream sends a keep-alive every 15 s: a read that waits 45 s has lost it.
        let agent = remote.agent(Some(Duration::from_secs(45)));
        let mut req = remote
            .request(&agent, "GET", &format!("/experiments/{id}/curve"))
            .set("Accept", "text/event-stream");
        if let Some(l) = &last_id {
            req = req.set("Last-Event-ID", l);
        }
        let res = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(503, _)) | Err(ureq::Error::Transport(_)) => {
                // The service is restarting or busy: try again for up to two minutes.
                let since = *down_since.get_or_insert_with(Instant::now);
                anyhow::ensure!(
                    since.elapsed() < Duration::from_secs(120),
                    "{}: no answer for two minutes",
                    remote.url(&format!("/experiments/{id}/curve"))
                );
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            Err(ureq::Error::Status(code, r)) => {
                return Err(remote.refusal(&format!("GET /experiments/{id}/curve"), code, r));
            }
        };
        down_since = None;
        let mut ev = Event::default();
        for line in BufReader::new(res.into_reader()).lines() {
            let Ok(line) = line else {
                break; // dropped: reconnect
            };
            if line.is_empty() {
                let done = std::mem::take(&mut ev);
                if let Some(i) = &done.id {
                    last_id = Some(i.clone());
                }
                match done.kind.as_str() {
                    "progress" => {
                        let p: Value = serde_json::from_str(&done.data)?;
                        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                        bar.set_prefix(format!("{}/{}", p["epoch"], p["epochs"]));
                        bar.set_length(p["batches"].as_u64().unwrap_or(0));
                        bar.set_position(p["batch"].as_u64().unwrap_or(0));
                        bar.set_message(
                            p["loss"]
                                .as_f64()
                                .map_or_else(|| "-".into(), |l| format!("{l:.4}")),
                        );
                    }
                    "epoch" => {
                        let m: EpochMetrics = serde_json::from_str(&done.data)?;
                        bar.suspend(|| {
                            if !header {
                                print_header();
                                header = true;
                            }
                            print_row(&m);
                        });
                    }
                    "status" => {
                        let s: Value = serde_json::from_str(&done.data)?;
                        bar.suspend(|| {
                            eprintln!("status: {}", s["status"].as_str().unwrap_or("?"))
                        });
                    }
                    "end" => {
                        bar.finish_and_clear();
                        let e: Value = serde_json::from_str(&done.data)?;
                        let status = e["status"].as_str().unwrap_or("?");
                        match status {
                            "succeeded" => {
                                let stop = if e["stop_reason"].is_string() {
                                    format!(" (early stopping after epoch {})", e["stopped_epoch"])
                                } else {
                                    String::new()
                                };
                                println!("succeeded{stop}; best epoch {}", e["best_epoch"]);
                                return Ok(());
                            }
                            "failed" => anyhow::bail!(
                                "failed: {}",
                                e["error"].as_str().unwrap_or("(no reason given)")
                            ),
                            other => anyhow::bail!("{other}"),
                        }
                    }
                    _ => {}
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // keep-alive
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => ev.kind = value.to_string(),
                "id" => ev.id = Some(value.to_string()),
                "data" => {
                    if !ev.data.is_empty() {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                }
                _ => {}
            }
        }
        bar.suspend(|| eprintln!("the stream was interrupted; reconnecting"));
        std::thread::sleep(Duration::from_millis(500));
    }
}
