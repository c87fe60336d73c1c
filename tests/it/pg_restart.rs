//! PostgreSQL restarts while experiments train: real `trainyard serve` and `trainyard
//! worker` processes must ride it out on their own.
//!
//! This stops and starts the local Debian cluster (`pg_ctlcluster`), which breaks every
//! connection on the machine, other tests' included. So the test is `#[ignore]`d and
//! alone in its binary: `tests/run.sh` runs it by itself after every other test
//! (`cargo test --test pg_restart -- --ignored`).

use crate::common;

use std::time::{Duration, Instant};

use common::procs::{self, Harness, Timing, durable_ids, eventually, follow_curve, submit};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// torch-cnn on 6,000 images in batches of 20, four epochs (about a second each).
fn spec(seed: u64) -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 6000, "test_limit": 200},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 20,
        "epochs": 4,
        "shuffle": true,
        "seed": seed,
        "device": "cpu"
    })
}

/// The local cluster, stopped; started again when dropped (even if the test fails), so
/// that the machine is never left without its database.
struct Stopped {
    version: String,
    started: bool,
}

fn pg_ctlcluster(version: &str, action: &str) {
    let out = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .output()
        .expect("pg_ctlcluster (the Debian PostgreSQL cluster tools) must be installed");
    assert!(
        out.status.success(),
        "pg_ctlcluster {version} main {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Stopped {
    fn stop() -> Stopped {
        let version = std::fs::read_dir("/etc/postgresql")
            .expect("a Debian PostgreSQL cluster in /etc/postgresql")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .expect("a cluster version");
        pg_ctlcluster(&version, "stop");
        Stopped {
            version,
            started: false,
        }
    }

    fn start(mut self) {
        self.started = true;
        pg_ctlcluster(&self.version, "start");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            pg_ctlcluster(&self.version, "start");
        }
    }
}

#[sqlx::test]
#[ignore = "restarts PostgreSQL for everyone: tests/run.sh runs it alone, after the others"]
async fn workers_api_and_curve_followers_ride_out_a_postgresql_restart(pool: PgPool) {
    // A poll of a minute: after the restart only a NOTIFY can wake an idle worker quickly.
    let timing = Timing {
        lease_secs: 4.0,
        heartbeat_secs: 0.5,
        poll_secs: 60.0,
        grace_secs: 10.0,
    };
    let h = Harness::new(&pool, timing);
    let (api, base) = h.serve("api", 0);
    let w1 = h.worker("w1", 1, &[]);
    let w2 = h.worker("w2", 1, &[]);
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for seed in 0..3 {
        ids.push(submit(&client, &base, &spec(seed)).await);
    }
    let (breaks, breaks_rx) = tokio::sync::watch::channel(0u32);
    let followers: Vec<_> = ids
        .iter()
        .map(|id| {
            let (client, rx) = (client.clone(), breaks_rx.clone());
            let url = format!("{base}/experiments/{id}/curve");
            tokio::spawn(async move { follow_curve(&client, &url, 240, Some(rx)).await })
        })
        .collect();

    // Training is under way: an epoch is stored.
    eventually(120, "a first epoch", || async {
        let (n,): (i32,) = sqlx::query_as("SELECT max(epochs_done) FROM experiments")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n >= 1).then_some(())
    })
    .await;

    // PostgreSQL goes away for a moment; meanwhile every follower's connection breaks
    // and each reconnects (to an API that cannot reach its database yet).
    let t0 = Instant::now();
    let stopped = tokio::task::spawn_blocking(Stopped::stop).await.unwrap();
    breaks.send_modify(|n| *n += 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(move || stopped.start())
        .await
        .unwrap();
    eprintln!("PostgreSQL down for {:.1}s", t0.elapsed().as_secs_f64());

    // The experiments finish, every epoch once.
    for id in &ids {
        eventually(180, "the experiments to succeed", || async {
            let s = sqlx::query_scalar::<_, String>("SELECT status FROM experiments WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?;
            assert!(s != "failed" && s != "cancelled", "{id} ended {s}");
            (s == "succeeded").then_some(())
        })
        .await;
    }
    let done: Vec<(i32,)> = sqlx::query_as("SELECT epochs_done FROM experiments")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(done.iter().all(|d| d.0 == 4), "{done:?}");
    assert_eq!(procs::check_lease_history(&pool).await, 3);

    // Each follower, reconnecting with Last-Event-ID, got every stored event once, in order.
    let mut connections = 0;
    for (id, f) in ids.iter().zip(followers) {
        let f = f.await.unwrap();
        connections += f.connections;
        assert_eq!(
            durable_ids(&f),
            procs::stored_event_ids(&pool, *id).await,
            "{id}: {:?}",
            f.events
        );
        assert_eq!(f.events.last().unwrap().data["status"], "succeeded");
    }
    assert!(connections > ids.len(), "the followers never reconnected");

    // The API answers again, and each process re-subscribed its LISTEN connection.
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for p in [&api, &w1, &w2] {
        p.wait_log(
            |l| procs::message(l) == "LISTEN connection re-established",
            Duration::from_secs(30),
        );
    }

    // New work after the restart: an idle worker claims it at once (woken by NOTIFY, not
    // by its one-minute poll), and a follower gets its events live.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut small = spec(9);
    small["epochs"] = json!(1);
    small["dataset"]["train_limit"] = json!(600);
    let z: Uuid = submit(&client, &base, &small).await;
    let url = format!("{base}/experiments/{z}/curve");
    let f = follow_curve(&client, &url, 30, None).await;
    assert_eq!(f.connections, 1);
    assert_eq!(f.events.last().unwrap().data["status"], "succeeded");
    let (wait,): (f64,) = sqlx::query_as(
        "SELECT extract(epoch FROM started_at - created_at)::float8 FROM experiments WHERE id = $1",
    )
    .bind(z)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(wait < 5.0, "claimed {wait}s after submission");
    eprintln!(
        "after the restart: claimed {:.0} ms after submission",
        wait * 1e3
    );
}
