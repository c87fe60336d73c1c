//! A real browser for the web app's tests: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) with fantoccini, over plain HTTP on loopback.
//!
//! Each test gets its own chromedriver and profile folder, started here and killed when
//! the [`Browser`] drops. Browser tests take one lock ([`one_at_a_time`]): two Chromiums
//! on a two-core machine make every timing in them meaningless. A scenario that fails
//! leaves a screenshot under `target/browser-screenshots/`, named after the test.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};

/// Where screenshots go: the failing tests' and the book's.
pub fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/browser-screenshots"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Held for the whole of a browser test.
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with a 1280x900 window.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; tests/run.sh installs it)");
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // The machine has no network: nothing may try to reach one.
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let caps = match caps {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Runs `scenario`; if it panics, saves a screenshot named `name` first.
    pub async fn run<F, Fut>(&self, name: &str, scenario: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()>,
    {
        let r = std::panic::AssertUnwindSafe(scenario(self.client.clone()))
            .catch_unwind()
            .await;
        if let Err(panic) = r {
            let path = screenshot_dir().join(format!("{name}-failed.png"));
            if let Ok(png) = self.client.screenshot().await {
                let _ = std::fs::write(&path, png);
                eprintln!("screenshot of the failure: {}", path.display());
            }
            std::panic::resume_unwind(panic);
        }
    }

    /// Saves a screenshot (for the README and the book) as `name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Evaluates `expr` in the page and returns its JSON value.
pub async fn js(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return ({expr});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// Polls `expr` until `ok` holds for its value (or panics after `secs`, with the value).
/// An expression that throws is polled again: right after `goto` the app's module may
/// not have run yet (`window.trainyard` is set by its first render), and a page being
/// rebuilt may lack the element asked about for a moment.
pub async fn until(c: &Client, secs: u64, expr: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let guarded = format!(
        "(() => {{ try {{ return {{ok: ({expr})}}; }} catch (e) {{ return {{thrown: String(e)}}; }} }})()"
    );
    loop {
        let got = js(c, &guarded).await;
        match got.get("ok") {
            Some(v) if ok(v) => return v.clone(),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "after {secs}s, {expr} is {}",
            got.get("ok").unwrap_or(&got)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The element with `data-testid="id"`, waiting for it to appear.
pub async fn testid(c: &Client, id: &str) -> fantoccini::elements::Element {
    let sel = format!("[data-testid=\"{id}\"]");
    tokio::time::timeout(
        Duration::from_secs(20),
        c.wait().for_element(Locator::Css(&sel)),
    )
    .await
    .unwrap_or_else(|_| panic!("no {sel} after 20s"))
    .unwrap()
}

/// What the page recorded going wrong: script errors and Content-Security-Policy
/// violations (`window.trainyard.problems`, kept by the app's router).
pub async fn page_problems(c: &Client) -> Vec<String> {
    let v = js(c, "(window.trainyard && window.trainyard.problems) || []").await;
    v.as_array()
        .into_iter()
        .flatten()
        .map(|p| p.as_str().unwrap_or_default().to_string())
        .collect()
}
