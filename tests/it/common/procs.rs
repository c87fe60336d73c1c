//! Real `trainyard serve` and `trainyard worker` processes (the binary cargo builds for
//! the integration tests) against one `#[sqlx::test]` database, so that faults can be
//! what they are in production: signals to whole processes, a database server restart.
//!
//! Each process logs JSON lines to its own file; a test waits on those logs and on the
//! database, never on sleeps alone. A process still running when its handle drops is
//! killed (SIGKILL) and reaped, and when the test failed its log's tail is printed.

#![allow(dead_code)]

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sqlx::PgPool;

use super::service::{SseEvent, next_event};

/// The URL of the test's own database: `DATABASE_URL` with the database name of `pool`.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let name = pool
        .connect_options()
        .get_database()
        .expect("a #[sqlx::test] pool names its database")
        .to_string();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base.as_str(), None),
    };
    let (server, _) = head.rsplit_once('/').expect("a database URL has a path");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Lease, heartbeat and poll intervals of the processes a test starts.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_secs: f64,
    pub heartbeat_secs: f64,
    pub poll_secs: f64,
    pub grace_secs: f64,
}

impl Default for Timing {
    /// Short enough that a lost worker is rescued within about three seconds.
    fn default() -> Self {
        Timing {
            lease_secs: 2.0,
            heartbeat_secs: 0.3,
            poll_secs: 0.5,
            grace_secs: 10.0,
        }
    }
}

/// Starts processes of one test and keeps their logs in one temporary folder.
pub struct Harness {
    pub url: String,
    pub timing: Timing,
    logs: tempfile::TempDir,
}

impl Harness {
    pub fn new(pool: &PgPool, timing: Timing) -> Harness {
        remember_failures();
        Harness {
            url: database_url(pool),
            timing,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    fn common_args(&self, workers: usize) -> Vec<String> {
        let t = self.timing;
        let data_dir = super::data_dir().to_str().unwrap().to_string();
        let mut args = Vec::new();
        for (flag, value) in [
            ("--database-url", self.url.clone()),
            ("--db-connections", "4".into()),
            ("--workers", workers.to_string()),
            ("--lease-secs", t.lease_secs.to_string()),
            ("--heartbeat-secs", t.heartbeat_secs.to_string()),
            ("--poll-secs", t.poll_secs.to_string()),
            ("--shutdown-grace-secs", t.grace_secs.to_string()),
            ("--device", "cpu".into()),
            ("--data-dir", data_dir),
        ] {
            args.push(flag.to_string());
            args.push(value);
        }
        args.push("--no-download".into());
        args
    }

    /// `trainyard worker` with `workers` worker tasks; returns once it is working.
    pub fn worker(&self, name: &str, workers: usize, env: &[(&str, &str)]) -> Proc {
        let mut args = vec!["worker".to_string()];
        args.extend(self.common_args(workers));
        let p = self.spawn(name, &args, env);
        p.wait_log(|l| message(l) == "working", Duration::from_secs(60));
        p
    }

    /// `trainyard serve` on a free loopback port with `workers` worker tasks; returns once
    /// it serves, with its base URL.
    pub fn serve(&self, name: &str, workers: usize) -> (Proc, String) {
        self.serve_on(name, workers, "127.0.0.1:0")
    }

    /// `trainyard serve` with `workers` worker tasks on a loopback port chosen here, so
    /// that a test can stop it and start another on the same address (`serve_on` with
    /// the returned bind address), as a client reconnecting after a restart finds it.
    pub fn serve_restartable(&self, name: &str, workers: usize) -> (Proc, String, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = format!("127.0.0.1:{port}");
        let (p, base) = self.serve_on(name, workers, &bind);
        (p, base, bind)
    }

    /// `trainyard serve` bound to `bind` (a restarted server on the same address), with
    /// keys off (these tests are about everything else; `serve_with` turns them on).
    pub fn serve_on(&self, name: &str, workers: usize, bind: &str) -> (Proc, String) {
        self.serve_with(name, workers, bind, &["--auth", "off"])
    }

    /// `trainyard serve` bound to `bind` with `extra` flags.
    pub fn serve_with(
        &self,
        name: &str,
        workers: usize,
        bind: &str,
        extra: &[&str],
    ) -> (Proc, String) {
        let mut args = vec!["serve".to_string(), "--bind".into(), bind.into()];
        args.extend(self.common_args(workers));
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = self.spawn(name, &args, &[]);
        let line = p.wait_log(|l| message(l) == "serving", Duration::from_secs(60));
        let address = line["fields"]["address"].as_str().unwrap().to_string();
        (p, format!("http://{address}"))
    }

    fn spawn(&self, name: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
        let log = self.logs.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trainyard"));
        cmd.args(args)
            .env("TRAINYARD_LOG_JSON", "true")
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("TRAINYARD_WORKERS")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Proc {
            name: name.to_string(),
            pid: child.id() as i32,
            child: Some(child),
            log,
        }
    }
}

/// Whether process `pid` is gone (or a zombie no one has reaped yet).
pub fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits up to `timeout` for process `pid` to be gone.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    gone(pid)
}

/// The `message` field of a JSON log line.
pub fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// A running trainyard process.
pub struct Proc {
    pub name: String,
    pub pid: i32,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Sends `sig` (libc::SIGKILL, SIGTERM, SIGSTOP, SIGCONT).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        let r = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the job process this process started last (from its log).
    pub fn job_pid(&self) -> i32 {
        let l = self.wait_log(
            |l| message(l) == "job process started",
            Duration::from_secs(30),
        );
        let last = self.logged("job process started").pop().unwrap_or(l);
        last["fields"]["pid"].as_i64().unwrap() as i32
    }

    /// Every JSON log line so far.
    pub fn log_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines whose message is `m`.
    pub fn logged(&self, m: &str) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|l| message(l) == m)
            .collect()
    }

    /// Waits for a log line matching `f` (panics with the log after `timeout`).
    pub fn wait_log(&self, f: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.log_lines().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no such log line after {timeout:?}:\n{}",
                self.name,
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last `n` lines of the log, as written.
    /// The whole log as written.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines, each made short ([`compact`]), for a person to read.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| compact(l))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Keeps the whole log under `target/test-logs/` (the temporary folder goes with the
    /// test); returns where.
    fn keep_log(&self) -> Option<PathBuf> {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-logs"));
        std::fs::create_dir_all(&dir).ok()?;
        let to = dir.join(format!("{}-{}.log", self.name, self.pid));
        std::fs::copy(&self.log, &to).ok()?;
        Some(to)
    }
}

/// A JSON log line as one short line: time, level, message, its fields and the request's
/// method and path. CI shows the end of a failed test's output: the processes' logs must
/// not push the failure itself out of it.
fn compact(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return line.chars().take(300).collect();
    };
    let time = v["timestamp"].as_str().unwrap_or("");
    let time = time.get(11..23).unwrap_or(time);
    let mut out = format!(
        "{time} {} {}",
        v["level"].as_str().unwrap_or(""),
        message(&v)
    );
    if let Some(fields) = v["fields"].as_object() {
        for (k, f) in fields.iter().filter(|(k, _)| *k != "message") {
            out.push_str(&format!(" {k}={f}"));
        }
    }
    if let Some(span) = v["span"].as_object() {
        for k in ["method", "path", "experiment_id"] {
            if let Some(f) = span.get(k) {
                out.push_str(&format!(" {k}={f}"));
            }
        }
    }
    out.chars().take(300).collect()
}

thread_local! {
    /// The message of the latest panic on this thread.
    static FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Remembers each panic's message (besides printing it as before), so that the logs
/// printed after it can repeat it at their end, where CI's excerpt of the output shows it.
fn remember_failures() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text: String = info.to_string().chars().take(1500).collect();
            FAILURE.with(|f| *f.borrow_mut() = Some(text));
            previous(info);
        }));
    });
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = self.keep_log();
            eprintln!(
                "--- log of {} (pid {}), the last 25 lines{} ---\n{}",
                self.name,
                self.pid,
                kept.map(|p| format!("; all of it in {}", p.display()))
                    .unwrap_or_default(),
                self.tail(25)
            );
            if let Some(f) = FAILURE.with(|f| f.borrow().clone()) {
                eprintln!("--- the failure, again: {f}");
            }
        }
        self.kill();
    }
}

/// Polls `f` every 50 ms until it returns `Some` (panics with `what` after `secs`).
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An experiment's `status` column.
pub async fn status(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM experiments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Submits a spec through the API; returns the experiment's id.
pub async fn submit(client: &reqwest::Client, base: &str, spec: &Value) -> uuid::Uuid {
    let r = client
        .post(format!("{base}/experiments"))
        .json(spec)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().parse().unwrap()
}

/// What a reconnecting curve follower received.
#[derive(Debug, Default)]
pub struct Followed {
    pub events: Vec<SseEvent>,
    /// Connections made (1 when the stream never broke).
    pub connections: usize,
}

/// Follows a curve as a browser's `EventSource` would: whenever the stream breaks before
/// its `end` event (or cannot be opened), it reconnects after 200 ms with the
/// `Last-Event-ID` of the last event received. Each change of `breaks` drops the current
/// connection the same way (a client's network failing). Returns once `end` arrives.
pub async fn follow_curve(
    client: &reqwest::Client,
    url: &str,
    secs: u64,
    mut breaks: Option<tokio::sync::watch::Receiver<u32>>,
) -> Followed {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut out = Followed::default();
    let mut last_id: Option<String> = None;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no end event after {secs}s and {} connections: {:?}",
            out.connections,
            out.events
        );
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        out.connections += 1;
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Ok(Ok(r)) if r.status() == 200 => r,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = resp.bytes_stream();
        let mut buf = String::new();
        loop {
            let broken = async {
                match breaks.as_mut() {
                    Some(b) => {
                        if b.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let chunk = tokio::select! {
                c = tokio::time::timeout_at(deadline, stream.next()) => c,
                _ = broken => break,
            };
            let chunk = match chunk {
                Ok(Some(Ok(c))) => c,
                // Ended or broke without `end`, or the deadline (checked above): reconnect.
                _ => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(ev) = next_event(&mut buf) {
                let Some(ev) = ev else { continue }; // a keep-alive comment
                if ev.id.is_some() {
                    last_id = ev.id.clone();
                }
                let end = ev.event == "end";
                out.events.push(ev);
                if end {
                    return out;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The durable event ids a follower received (`status` and `epoch`), in order.
pub fn durable_ids(f: &Followed) -> Vec<i64> {
    f.events
        .iter()
        .filter(|e| e.event == "status" || e.event == "epoch")
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect()
}

/// An experiment's stored event ids, in order.
pub async fn stored_event_ids(pool: &PgPool, id: uuid::Uuid) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM experiment_events WHERE experiment_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Checks the lease history of every experiment: attempts numbered 1..=attempt, each
/// released before the next was claimed (never two holders at once), every epoch row
/// written by exactly one attempt while that attempt held the lease, epochs 1..=n once
/// each, and a finished experiment's last attempt released with its final status.
/// Returns the number of experiments checked.
pub async fn check_lease_history(pool: &PgPool) -> usize {
    let exps: Vec<(uuid::Uuid, String, i32, i32)> =
        sqlx::query_as("SELECT id, status, attempt, epochs_done FROM experiments")
            .fetch_all(pool)
            .await
            .unwrap();
    for (id, status, attempt, epochs_done) in &exps {
        type Claim = (
            i32,
            String,
            chrono::DateTime<chrono::Utc>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<String>,
        );
        let claims: Vec<Claim> = sqlx::query_as(
            "SELECT attempt, owner, claimed_at, released_at, released_as
             FROM experiment_claims WHERE experiment_id = $1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap();
        let numbers: Vec<i32> = claims.iter().map(|c| c.0).collect();
        assert_eq!(
            numbers,
            (1..=*attempt).collect::<Vec<_>>(),
            "{id}: {claims:?}"
        );
        for pair in claims.windows(2) {
            let released = pair[0].3.unwrap_or_else(|| panic!("{id}: {claims:?}"));
            assert!(released <= pair[1].2, "{id}: overlapping claims {claims:?}");
        }
        if let Some(last) = claims.last() {
            match status.as_str() {
                "running" => assert!(last.3.is_none(), "{id}: {claims:?}"),
                "queued" => assert!(last.3.is_some(), "{id}: {claims:?}"),
                s => assert!(
                    last.4.as_deref() == Some(s)
                        || last.4.as_deref() == Some("rescued")
                        || last.4.as_deref() == Some("handed_back"),
                    "{id} is {s}: {claims:?}"
                ),
            }
        }
        let epochs: Vec<(i32, Option<i32>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT epoch, attempt, recorded_at FROM epoch_metrics
             WHERE experiment_id = $1 ORDER BY epoch",
        )
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap();
        let numbers: Vec<i32> = epochs.iter().map(|e| e.0).collect();
        assert_eq!(numbers, (1..=*epochs_done).collect::<Vec<_>>(), "{id}");
        for (epoch, by, at) in &epochs {
            let by = by.unwrap_or_else(|| panic!("{id}: epoch {epoch} names no attempt"));
            let c = &claims[(by - 1) as usize];
            assert!(
                c.2 <= *at && c.3.is_none_or(|r| *at <= r),
                "{id}: epoch {epoch} recorded at {at} outside attempt {by}'s lease {c:?}"
            );
        }
    }
    exps.len()
}
