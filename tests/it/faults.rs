//! trainyard's guarantees under faults, with real processes: `trainyard serve` and
//! `trainyard worker` started from the built binary against a fresh database per test
//! (`#[sqlx::test]`), and killed, stopped or terminated with real signals.
//!
//! The checks read the database, which records who held each attempt and when
//! (`experiment_claims`) and which attempt wrote each epoch (`epoch_metrics.attempt`);
//! see [`common::procs::check_lease_history`]. Restarting PostgreSQL is in
//! `tests/pg_restart.rs`, run alone because it disturbs every other test.

use crate::common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::procs::{self, Harness, Proc, Timing, eventually, submit};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use trainyard::data::prepare::prepare;
use trainyard::engine::{Checkpoint, EngineError, EpochMetrics, Observer, Trainer};
use trainyard::store::CHANNEL_PROGRESS;
use trainyard::store::queue::EpochRecord;
use uuid::Uuid;

/// torch-cnn on 8,000 images in batches of 20: 400 batches an epoch, from a fraction of a
/// second to a few seconds depending on the machine's load, so a signal sent when an
/// epoch's first progress arrives lands in the middle of it.
fn slow(epochs: u32) -> Value {
    json!({
        "preset": "torch-cnn",
        "dataset": {"train_limit": 8000, "test_limit": 200},
        "optimizer": {"type": "sgd", "learning_rate": 0.05, "momentum": 0.9},
        "batch_size": 20,
        "epochs": epochs,
        "shuffle": true,
        "seed": 7,
        "device": "cpu"
    })
}

/// A linear model on 64 8x8 images in batches of 32, two epochs: four training steps.
fn tiny(seed: u64) -> Value {
    json!({
        "version": 1,
        "dataset": {"name": "mnist", "train_limit": 64, "test_limit": 32, "resize": [8, 8]},
        "model": {"init": "torch", "layers": [
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "log_softmax"}
        ]},
        "loss": "cross_entropy",
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "epochs": 2, "batch_size": 32, "shuffle": true, "seed": seed, "device": "cpu"
    })
}

/// The per-epoch metrics (timings left out) of an uninterrupted in-process run of
/// `slow(3)`, computed once for every test of this binary.
async fn uninterrupted_slow3() -> Vec<EpochRecord> {
    static RUN: OnceLock<Vec<EpochRecord>> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        RUN.get_or_init(|| {
            struct Keep(Vec<EpochMetrics>);
            impl Observer for Keep {
                fn on_epoch(&mut self, c: &Checkpoint) -> Result<(), EngineError> {
                    self.0 = c.history.clone();
                    Ok(())
                }
            }
            let spec = trainyard::spec::from_value(slow(3)).unwrap();
            let summary = trainyard::spec::validate(&spec).unwrap();
            let data = prepare(common::mnist(), &spec.dataset);
            let mut t = Trainer::new(&spec, &summary, &data, &candle_core::Device::Cpu).unwrap();
            let mut keep = Keep(Vec::new());
            t.run(&mut keep).unwrap();
            keep.0
                .iter()
                .map(|m| EpochRecord::from(&m.without_timing()))
                .collect()
        })
        .clone()
    })
    .await
    .unwrap()
}

async fn stored_metrics(pool: &PgPool, id: Uuid) -> Vec<EpochRecord> {
    trainyard::store::Store::from_pool(pool.clone())
        .metrics(id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| EpochRecord {
            train_seconds: 0.0,
            images_per_second: 0.0,
            ..r
        })
        .collect()
}

/// Which attempt wrote each epoch, in epoch order.
async fn epoch_writers(pool: &PgPool, id: Uuid) -> Vec<(i32, i32)> {
    sqlx::query_as(
        "SELECT epoch, attempt FROM epoch_metrics WHERE experiment_id = $1 ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `(status, attempt, rescues, epochs_done)` of an experiment.
async fn state(pool: &PgPool, id: Uuid) -> (String, i32, i32, i32) {
    sqlx::query_as("SELECT status, attempt, rescues, epochs_done FROM experiments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `(attempt, released_as)` of each claim, and whether its owner was process `pid`.
async fn claims(pool: &PgPool, id: Uuid, pid: i32) -> Vec<(i32, Option<String>, bool)> {
    let rows: Vec<(i32, Option<String>, String)> = sqlx::query_as(
        "SELECT attempt, released_as, owner FROM experiment_claims
         WHERE experiment_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(a, r, owner)| (a, r, owner.contains(&format!("-{pid}/"))))
        .collect()
}

/// Waits for a progress NOTIFY of `id` in the first three quarters of epoch `epoch`
/// (progress goes out at most every 100 ms, so the first half may show none).
async fn wait_mid_epoch(listener: &mut PgListener, id: Uuid, epoch: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no progress in epoch {epoch}");
        let Ok(n) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await else {
            continue;
        };
        let p: Value = serde_json::from_str(n.unwrap().payload()).unwrap();
        let (batch, batches) = (p["batch"].as_u64().unwrap(), p["batches"].as_u64().unwrap());
        if p["experiment_id"] == json!(id) && p["epoch"] == epoch && batch * 4 <= batches * 3 {
            return p;
        }
    }
}

/// Discards the notifications already delivered.
async fn drain(listener: &mut PgListener) {
    while tokio::time::timeout(Duration::from_millis(200), listener.recv())
        .await
        .is_ok()
    {}
}

async fn progress_listener(pool: &PgPool) -> PgListener {
    let mut l = PgListener::connect_with(pool).await.unwrap();
    l.listen(CHANNEL_PROGRESS).await.unwrap();
    l
}

async fn wait_status(pool: &PgPool, id: Uuid, want: &str, secs: u64, procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = procs::status(pool, id).await;
        if s == want {
            return;
        }
        if Instant::now() > deadline {
            for p in procs {
                eprintln!("--- {} ---\n{}", p.name, p.tail(30));
            }
            panic!("{id} still {s} after {secs}s (waiting for {want})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test]
async fn a_worker_killed_mid_epoch_is_rescued_and_the_run_resumes_exactly(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_api, base) = h.serve("api", 0);
    let mut a = h.worker("a", 1, &[]);
    let mut progress = progress_listener(&pool).await;
    let id = submit(&reqwest::Client::new(), &base, &slow(3)).await;

    wait_mid_epoch(&mut progress, id, 2).await;
    let job = a.job_pid();
    a.signal(libc::SIGKILL);
    assert!(a.wait_exit(Duration::from_secs(5)).is_some());
    // Its job process died with it: nothing trains on for a supervisor that is gone.
    assert!(
        procs::wait_gone(job, Duration::from_secs(2)),
        "job process {job} outlived its supervisor"
    );
    // Killed in the middle of epoch 2: epoch 1 stored, the lease still A's.
    assert_eq!(state(&pool, id).await, ("running".into(), 1, 0, 1));

    // Another worker rescues it once the lease expires and finishes it.
    let b = h.worker("b", 1, &[]);
    let t0 = Instant::now();
    wait_status(&pool, id, "succeeded", 120, &[&b]).await;
    assert_eq!(state(&pool, id).await, ("succeeded".into(), 2, 1, 3));
    // Epoch 1 is A's, epochs 2 and 3 B's: nothing lost, nothing written twice.
    assert_eq!(epoch_writers(&pool, id).await, [(1, 1), (2, 2), (3, 2)]);
    assert_eq!(
        claims(&pool, id, a.pid).await,
        [
            (1, Some("rescued".to_string()), true),
            (2, Some("succeeded".to_string()), false)
        ]
    );
    // B resumed from epoch 1's checkpoint: the curve is the uninterrupted run's, exactly.
    assert_eq!(stored_metrics(&pool, id).await, uninterrupted_slow3().await);
    assert_eq!(procs::check_lease_history(&pool).await, 1);
    eprintln!("kill to success: {:.1}s", t0.elapsed().as_secs_f64());
}

#[sqlx::test]
async fn a_job_process_killed_from_outside_is_rescued_at_once_and_resumes_exactly(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_api, base) = h.serve("api", 0);
    let mut w = h.worker("w", 1, &[]);
    let mut progress = progress_listener(&pool).await;
    let id = submit(&reqwest::Client::new(), &base, &slow(3)).await;

    wait_mid_epoch(&mut progress, id, 2).await;
    let job = w.job_pid();
    // SAFETY: kill(2) on a pid this test read from the worker's log.
    assert_eq!(unsafe { libc::kill(job, libc::SIGKILL) }, 0);
    // Not the job's doing: the same worker requeues it as a rescue, and trains it again
    // from epoch 1's checkpoint without waiting for the lease to expire.
    wait_status(&pool, id, "succeeded", 120, &[&w]).await;
    assert_eq!(state(&pool, id).await, ("succeeded".into(), 2, 1, 3));
    assert_eq!(epoch_writers(&pool, id).await, [(1, 1), (2, 2), (3, 2)]);
    assert_eq!(
        claims(&pool, id, w.pid).await,
        [
            (1, Some("rescued".to_string()), true),
            (2, Some("succeeded".to_string()), true)
        ]
    );
    assert_eq!(stored_metrics(&pool, id).await, uninterrupted_slow3().await);
    let lost = w.wait_log(
        |l| procs::message(l) == "the job process died; the experiment goes back to the queue",
        Duration::from_secs(1),
    );
    assert!(
        lost["fields"]["cause"]
            .as_str()
            .unwrap()
            .contains("SIGKILL"),
        "{lost}"
    );
    assert!(
        w.wait_exit(Duration::from_millis(1)).is_none(),
        "the worker exited"
    );
    assert_eq!(procs::check_lease_history(&pool).await, 1);
}

#[sqlx::test]
async fn sigterm_stops_claiming_hands_the_job_back_unspent_and_exits_in_bound(pool: PgPool) {
    let timing = Timing {
        grace_secs: 5.0,
        ..Timing::default()
    };
    let h = Harness::new(&pool, timing);
    let (_api, base) = h.serve("api", 0);
    let mut w = h.worker("w", 1, &[]);
    let client = reqwest::Client::new();
    let mut progress = progress_listener(&pool).await;
    let x = submit(&client, &base, &slow(3)).await;
    wait_mid_epoch(&mut progress, x, 1).await;
    // Queued while W is busy: after the signal W must not take it.
    let y = submit(&client, &base, &tiny(1)).await;
    wait_mid_epoch(&mut progress, x, 2).await;

    let job = w.job_pid();
    let t0 = Instant::now();
    w.signal(libc::SIGTERM);
    let exit = w.wait_exit(Duration::from_secs(15));
    assert!(
        procs::gone(job),
        "job process {job} outlived its supervisor"
    );
    let took = t0.elapsed();
    let exit = exit.expect("the worker did not exit");
    // Exited on its own (status 0), well within the grace period that would cut it off.
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eprintln!("SIGTERM to exit: {:.0} ms", took.as_secs_f64() * 1e3);
    assert_eq!(w.logged("handed back on shutdown").len(), 1);

    // X is back in the queue with epoch 1 kept and no rescue spent; Y was never claimed.
    assert_eq!(state(&pool, x).await, ("queued".into(), 1, 0, 1));
    assert_eq!(
        claims(&pool, x, w.pid).await,
        [(1, Some("handed_back".to_string()), true)]
    );
    assert_eq!(state(&pool, y).await, ("queued".into(), 0, 0, 0));

    // Another worker finishes both; X's curve is still the uninterrupted run's.
    let v = h.worker("v", 1, &[]);
    wait_status(&pool, x, "succeeded", 120, &[&v]).await;
    wait_status(&pool, y, "succeeded", 60, &[&v]).await;
    assert_eq!(state(&pool, x).await, ("succeeded".into(), 2, 0, 3));
    assert_eq!(epoch_writers(&pool, x).await, [(1, 1), (2, 2), (3, 2)]);
    assert_eq!(stored_metrics(&pool, x).await, uninterrupted_slow3().await);
    assert_eq!(procs::check_lease_history(&pool).await, 2);
}

#[sqlx::test]
async fn a_stopped_worker_whose_lease_was_taken_over_writes_nothing_and_drops_its_job(
    pool: PgPool,
) {
    let h = Harness::new(&pool, Timing::default());
    let (_api, base) = h.serve("api", 0);
    let a = h.worker("a", 1, &[]);
    let mut progress = progress_listener(&pool).await;
    let id = submit(&reqwest::Client::new(), &base, &slow(3)).await;
    wait_mid_epoch(&mut progress, id, 2).await;
    a.signal(libc::SIGSTOP);

    // Frozen past its lease: B rescues the experiment and trains it to the end.
    let b = h.worker("b", 1, &[]);
    wait_status(&pool, id, "succeeded", 120, &[&b]).await;
    let before = snapshot(&pool, id).await;
    assert_eq!(state(&pool, id).await, ("succeeded".into(), 2, 1, 3));

    // A wakes up in the middle of its epoch 2, finds its lease gone and drops the job.
    drain(&mut progress).await;
    a.signal(libc::SIGCONT);
    a.wait_log(
        |l| procs::message(l) == "lease lost; dropped the job",
        Duration::from_secs(20),
    );
    // Nothing it did after waking reached the database or the curve's followers.
    let late = tokio::time::timeout(Duration::from_millis(500), progress.recv()).await;
    if let Ok(n) = late {
        let p: Value = serde_json::from_str(n.unwrap().payload()).unwrap();
        assert_ne!(
            p["experiment_id"],
            json!(id),
            "progress after the lease was lost: {p}"
        );
    }
    assert_eq!(snapshot(&pool, id).await, before);
    assert_eq!(epoch_writers(&pool, id).await, [(1, 1), (2, 2), (3, 2)]);
    assert_eq!(stored_metrics(&pool, id).await, uninterrupted_slow3().await);
    assert_eq!(
        claims(&pool, id, a.pid).await,
        [
            (1, Some("rescued".to_string()), true),
            (2, Some("succeeded".to_string()), false)
        ]
    );
    assert_eq!(a.logged("experiment ended").len(), 0);
    assert_eq!(procs::check_lease_history(&pool).await, 1);
}

/// Everything a worker could write about an experiment.
async fn snapshot(pool: &PgPool, id: Uuid) -> Value {
    sqlx::query_scalar(
        "SELECT json_build_object(
            'experiment', (SELECT to_jsonb(e) FROM experiments e WHERE id = $1),
            'events', (SELECT json_agg(v ORDER BY v.id) FROM experiment_events v
                       WHERE experiment_id = $1),
            'epochs', (SELECT json_agg(m ORDER BY m.epoch) FROM epoch_metrics m
                       WHERE experiment_id = $1),
            'checkpoints', (SELECT json_agg(json_build_object('epoch', c.epoch,
                                'sha256', encode(c.sha256, 'hex')) ORDER BY c.epoch)
                            FROM checkpoints c WHERE experiment_id = $1),
            'claims', (SELECT json_agg(c ORDER BY c.attempt) FROM experiment_claims c
                       WHERE experiment_id = $1))::jsonb",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn hundreds_of_experiments_on_several_workers_each_run_once_on_one_worker(pool: PgPool) {
    const N: usize = 300;
    // No fault here: a lease long enough that a busy machine never loses one.
    let timing = Timing {
        lease_secs: 10.0,
        heartbeat_secs: 1.0,
        ..Timing::default()
    };
    let h = Harness::new(&pool, timing);
    let (api, base) = h.serve("api", 0);
    let one_thread = [("RAYON_NUM_THREADS", "1")];
    let workers: Vec<Proc> = (0..3)
        .map(|i| h.worker(&format!("w{i}"), 2, &one_thread))
        .collect();
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let ids: Vec<Uuid> = futures::stream::iter(0..N)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            async move { submit(&client, &base, &tiny(i as u64)).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(ids.len(), N);
    let ended = eventually(180, "every experiment to end", || async {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM experiments WHERE status IN ('succeeded', 'failed', 'cancelled')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n as usize == N).then_some(n)
    })
    .await;
    eprintln!(
        "{ended} experiments ended in {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // Each succeeded on its first and only claim, with one `running` and one terminal
    // event, and two epochs each written once by that claim.
    let rows: Vec<(String, i32, i32, i32, i64, i64)> = sqlx::query_as(
        "SELECT status, attempt, rescues, epochs_done,
            (SELECT count(*) FROM experiment_events v WHERE v.experiment_id = e.id
               AND v.data->>'status' = 'running'),
            (SELECT count(*) FROM experiment_events v WHERE v.experiment_id = e.id
               AND v.data->>'status' IN ('succeeded', 'failed', 'cancelled'))
         FROM experiments e",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let odd: Vec<_> = rows
        .iter()
        .filter(|r| **r != ("succeeded".to_string(), 1, 0, 2, 1, 1))
        .collect();
    assert!(
        odd.is_empty(),
        "{} odd of {N}: {:?}",
        odd.len(),
        &odd[..odd.len().min(5)]
    );
    assert_eq!(procs::check_lease_history(&pool).await, N);
    // The work was spread over the processes (each took some).
    let per_process: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(owner, '/', 1), count(*) FROM experiment_claims GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_process.len(), 3, "{per_process:?}");
    eprintln!("claims per worker process: {per_process:?}");
    drop(workers);
    drop(api);
}
