//! Keys as an operator handles them: the first start's admin key, `trainyard keys`, and
//! `--auth off` kept to loopback.

use crate::common;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use common::procs::{Harness, Timing, database_url, eventually};

fn trainyard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(args)
        .env_remove("TRAINYARD_AUTH")
        .output()
        .unwrap()
}

fn stdout_ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn is_key(s: &str) -> bool {
    s.len() == 67
        && s.starts_with("ty_")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The access log line of the first request to `path`, waiting for it to be written.
async fn access_line(p: &crate::common::procs::Proc, path: &str) -> Value {
    for _ in 0..50 {
        let found = p
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["fields"]["message"] == "finished processing request" && v["span"]["path"] == path
            });
        if let Some(v) = found {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no access line for {path}:\n{}", p.text());
}

async fn whoami(base: &str, key: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .get(format!("{base}/session"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[test]
fn auth_off_is_refused_unless_bound_to_loopback() {
    let out = trainyard(&["serve", "--auth", "off", "--bind", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");
}

#[sqlx::test]
async fn the_first_start_prints_one_admin_key_and_later_starts_none(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-key");
    let (mut serve, base) = h.serve_with(
        "first",
        0,
        "127.0.0.1:0",
        &["--admin-key-file", file.to_str().unwrap()],
    );
    // Standard output carries the key as a line of its own; the logs are JSON lines.
    let printed: Vec<String> = serve
        .text()
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), 1, "{printed:?}");
    let key = printed[0].clone();
    assert!(is_key(&key), "{key}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Probes first: a healthcheck's, a readiness probe's and a scrape's lines are DEBUG,
    // so by the time /session's INFO line is written theirs would have been.
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let res = reqwest::get(format!("{base}{probe}")).await.unwrap();
        assert_eq!(res.status(), 200, "{probe}");
    }
    let (status, who) = whoami(&base, &key).await;
    assert_eq!(status, 200);
    assert_eq!(
        (who["account"].as_str(), who["admin"].as_bool()),
        (Some("admin"), Some(true))
    );
    // By default each request gets one INFO access line: method, route, status, latency
    // and request id.
    let access = access_line(&serve, "/session").await;
    assert_eq!(access["level"], "INFO", "{access}");
    assert_eq!(access["fields"]["status"], 200, "{access}");
    assert!(access["fields"]["latency"].is_string(), "{access}");
    assert_eq!(access["span"]["method"], "GET", "{access}");
    let id = access["span"]["request_id"].as_str().unwrap_or_default();
    assert!(!id.is_empty(), "{access}");
    let log = serve.text();
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert!(
            !log.lines()
                .any(|l| l.contains("finished processing request")
                    && l.contains(&format!("\"path\":\"{probe}\""))),
            "{probe} is logged at DEBUG, not INFO:\n{log}"
        );
    }
    // Every start says where the first admin key is kept.
    assert!(
        log.contains(&format!("kept in {}", file.display())),
        "{log}"
    );

    // The client commands name the flag and the variable that give a key, never the
    // HTTP header; the key file the compose service sets works as a key.
    let ls = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .arg("ls")
            .args(args)
            .env("TRAINYARD_SERVER", &base)
            .env_remove("TRAINYARD_API_KEY")
            .env_remove("TRAINYARD_API_KEY_FILE")
            .output()
            .unwrap()
    };
    let none = ls(&[]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success(), "{err}");
    for words in ["answered 401", "--api-key", "TRAINYARD_API_KEY"] {
        assert!(err.contains(words), "{words}: {err}");
    }
    assert!(!err.contains("Authorization"), "{err}");
    let wrong = ls(&["--api-key", "ty_not_a_key"]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("--api-key (or TRAINYARD_API_KEY) is unknown or revoked"),
        "{err}"
    );
    stdout_ok(ls(&["--api-key-file", file.to_str().unwrap()]));
    stdout_ok(ls(&["--api-key", &key]));
    serve.kill();

    let (again, _) = h.serve_with(
        "second",
        0,
        "127.0.0.1:0",
        &[
            "--admin-key-file",
            file.to_str().unwrap(),
            "--admin-key-hint",
            "docker compose exec trainyard cat FILE",
        ],
    );
    let log = again.text();
    assert!(
        log.lines().all(|l| l.starts_with('{')),
        "an admin key exists: nothing is printed"
    );
    assert!(!log.contains(&key), "the key is printed once only");
    assert!(
        log.contains(&format!(
            "kept in {}; read it with: docker compose exec trainyard cat FILE",
            file.display()
        )),
        "a later start still says where the first key is: {log}"
    );
    // A start on a migrated database is quiet: no NOTICE from the migrations table.
    assert!(!log.contains("already exists"), "{log}");
}

#[sqlx::test]
async fn an_admin_key_file_that_cannot_be_written_does_not_lose_the_key(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (serve, base) = h.serve_with(
        "unwritable",
        0,
        "127.0.0.1:0",
        &["--admin-key-file", "/nonexistent/folder/admin-key"],
    );
    let printed: Vec<String> = serve
        .text()
        .lines()
        .filter(|l| !l.starts_with('{'))
        .map(str::to_string)
        .collect();
    assert_eq!(printed.len(), 1, "{}", serve.text());
    assert!(is_key(&printed[0]), "{printed:?}");
    assert_eq!(whoami(&base, &printed[0]).await.0, 200);
    assert!(
        serve.text().contains("/nonexistent/folder/admin-key"),
        "{}",
        serve.text()
    );
}

#[sqlx::test]
async fn keys_made_listed_and_revoked_on_the_command_line(pool: PgPool) {
    let url = database_url(&pool);
    let key = stdout_ok(trainyard(&[
        "keys",
        "create",
        "--account",
        "alice",
        "--database-url",
        &url,
    ]));
    let key = key.trim_end_matches('\n');
    assert!(is_key(key) && !key.contains('\n'), "{key:?}");

    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve_with("serve", 0, "127.0.0.1:0", &[]);
    assert_eq!(whoami(&base, key).await.0, 200);

    let list = stdout_ok(trainyard(&["keys", "list", "--database-url", &url]));
    let row = list
        .lines()
        .find(|l| l.contains("alice"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(&key[..15]), "the prefix is listed: {row}");
    assert!(!list.contains(&key[15..]), "never the secret");
    let id = row.split_whitespace().next().unwrap();

    let quota = stdout_ok(trainyard(&[
        "keys",
        "quota",
        "--account",
        "alice",
        "--max-running",
        "2",
        "--max-queued",
        "none",
        "--database-url",
        &url,
    ]));
    let account: Value = serde_json::from_str(&quota).unwrap();
    assert_eq!(account["quotas"]["max_running"], 2);
    assert_eq!(account["quotas"]["max_queued"], Value::Null);

    // Revoked by another process: the running server hears of it and forgets the key.
    stdout_ok(trainyard(&["keys", "revoke", id, "--database-url", &url]));
    eventually(10, "the revoked key to be refused", || async {
        (whoami(&base, key).await.0 == 401).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(whoami(&base, key).await.0, 401);
}
