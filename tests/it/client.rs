//! The client commands against real `trainyard serve` and `worker` processes: `submit
//! --follow` to the end, `ls`, `show`, `cancel`, `download`, `compare`, a refused spec
//! printed field by field, and `follow` carrying on across a server restart with
//! `Last-Event-ID` (each epoch's row printed exactly once).

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use common::procs::{Harness, Timing};

/// Runs `trainyard ARGS --server BASE`; (exit success, stdout, stderr).
async fn client(base: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(args)
        .env("TRAINYARD_SERVER", base)
        .env_remove("TRAINYARD_API_KEY")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn spec_file(dir: &std::path::Path, name: &str, spec: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, spec.to_string()).unwrap();
    p.to_str().unwrap().to_string()
}

/// The epoch numbers of the table rows in `out` (lines that start with a number).
fn rows(out: &str) -> Vec<u32> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn small(epochs: u32) -> Value {
    json!({"preset": "torch-cnn", "epochs": epochs, "device": "cpu",
           "dataset": {"train_limit": 1000, "test_limit": 200},
           "name": "from the command line"})
}

#[sqlx::test]
async fn submit_follow_ls_show_download_compare_cancel_and_errors(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 1);
    let dir = tempfile::tempdir().unwrap();

    let spec = spec_file(dir.path(), "a.json", &small(3));
    let (ok, out, err) = client(&base, &["submit", &spec, "--follow"]).await;
    assert!(ok, "{out}\n{err}");
    assert_eq!(rows(&out), [1, 2, 3], "a row per epoch:\n{out}");
    assert!(out.contains("succeeded; best epoch"), "{out}");
    let a = out.split_whitespace().next().unwrap().to_string();

    let (ok, out, _) = client(&base, &["ls"]).await;
    assert!(ok);
    assert!(
        out.contains(&a) && out.contains("succeeded") && out.contains("3/3"),
        "{out}"
    );
    let (ok, out, _) = client(&base, &["show", &a]).await;
    assert!(ok);
    assert_eq!(rows(&out), [1, 2, 3], "{out}");

    let file = dir.path().join("a.safetensors");
    let (ok, out, err) = client(
        &base,
        &[
            "download",
            &a,
            "--checkpoint",
            "last",
            "-o",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let bytes = std::fs::read(&file).unwrap();
    let ck = trainyard::engine::Checkpoint::from_bytes(&bytes, None).unwrap();
    assert_eq!(ck.epoch, 3);

    let spec_b = spec_file(
        dir.path(),
        "b.json",
        &json!({"preset": "torch-cnn", "epochs": 1, "device": "cpu", "batch_size": 32,
                "dataset": {"train_limit": 500, "test_limit": 200}}),
    );
    let (ok, out, _) = client(&base, &["submit", &spec_b, "--follow"]).await;
    assert!(ok, "{out}");
    let b = out.split_whitespace().next().unwrap().to_string();
    let svg = dir.path().join("c.svg");
    let (ok, out, err) = client(&base, &["compare", &a, &b, "--out", svg.to_str().unwrap()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("batch_size: 512 | 32"), "{out}");
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // A refused spec: the problem, field by field, and a non-zero exit.
    let bad = spec_file(
        dir.path(),
        "bad.json",
        &json!({"preset": "torch-cnn", "epochs": 0, "batch_size": "many"}),
    );
    let (ok, _, err) = client(&base, &["submit", &bad]).await;
    assert!(!ok);
    assert!(
        err.contains("answered 422") && err.contains("batch_size:"),
        "{err}"
    );
    let (ok, _, err) = client(&base, &["show", "00000000-0000-0000-0000-000000000000"]).await;
    assert!(!ok);
    assert!(err.contains("answered 404"), "{err}");

    // Cancel a long one while it runs: `follow` then exits non-zero, saying so.
    let long = spec_file(dir.path(), "long.json", &small(400));
    let (ok, out, _) = client(&base, &["submit", &long]).await;
    assert!(ok);
    let c = out.split_whitespace().next().unwrap().to_string();
    let follower = tokio::spawn({
        let (base, c) = (base.clone(), c.clone());
        async move { client(&base, &["follow", &c]).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out, _) = client(&base, &["cancel", &c]).await;
    assert!(ok, "{out}");
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .unwrap()
        .unwrap();
    assert!(!ok);
    assert!(err.contains("cancelled"), "{err}");
}

#[sqlx::test]
async fn follow_carries_on_across_a_server_restart_without_repeating_a_row(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (mut serve, base, bind) = h.serve_restartable("serve", 0);
    let _worker = h.worker("worker", 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let epochs = 6;
    let mut spec = small(epochs);
    // About a second an epoch, so that the restart falls mid-run.
    spec["dataset"]["train_limit"] = json!(3000);
    let (ok, out, err) = client(&base, &["submit", &spec_file(dir.path(), "s.json", &spec)]).await;
    assert!(ok, "{err}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let follower = tokio::spawn({
        let (base, id) = (base.clone(), id.clone());
        async move { client(&base, &["follow", &id]).await }
    });
    // Restart the server once two epochs are stored.
    common::procs::eventually(120, "two epochs", || async {
        let n: (i32,) = sqlx::query_as("SELECT epochs_done FROM experiments WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
        (n.0 >= 2).then_some(())
    })
    .await;
    serve.signal(libc::SIGTERM);
    serve
        .wait_exit(Duration::from_secs(20))
        .expect("serve stops on SIGTERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_again, _) = h.serve_on("serve-again", 0, &bind);
    let (ok, out, err) = tokio::time::timeout(Duration::from_secs(240), follower)
        .await
        .unwrap()
        .unwrap();
    assert!(ok, "{out}\n{err}");
    assert_eq!(rows(&out), (1..=epochs).collect::<Vec<_>>(), "{out}\n{err}");
    assert!(err.contains("reconnecting"), "the stream did drop: {err}");
}

#[sqlx::test]
async fn sweep_queues_follows_and_prints_the_ranking_and_refuses_field_by_field(pool: PgPool) {
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut tiny = small(1);
    tiny["dataset"]["train_limit"] = json!(300);
    tiny.as_object_mut().unwrap().remove("name");
    let file = spec_file(
        dir.path(),
        "sweep.json",
        &json!({"base": tiny, "grid": {"optimizer.learning_rate": [0.1, 0.001]},
                "name": "rates"}),
    );
    let (ok, out, err) = client(&base, &["sweep", &file, "--follow"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("grid sweep: 2 children queued"), "{out}");
    assert!(
        out.contains("2/2 ended (2 succeeded), 0 running, 0 queued"),
        "{out}"
    );
    let ranked: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']) && l.contains("optimizer"))
        .collect();
    assert_eq!(ranked.len(), 2, "a row per point:\n{out}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let svg = dir.path().join("sweep.svg");
    let (ok, again, _) = client(
        &base,
        &["sweep", "--id", &id, "--out", svg.to_str().unwrap()],
    )
    .await;
    assert!(ok);
    assert!(
        again.contains("2/2 ended") && again.contains("rank"),
        "{again}"
    );
    // One repeat per point: each point's line, and no band.
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(picture.matches("(mean of 1)").count(), 2, "{picture}");

    let bad = spec_file(
        dir.path(),
        "bad.json",
        &json!({"base": {"preset": "torch-cnn"}, "grid": {"batch_size": [0]}}),
    );
    let (ok, out, err) = client(&base, &["sweep", &bad]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("grid[\"batch_size\"]"), "{err}");
}
