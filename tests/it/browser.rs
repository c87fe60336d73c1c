//! The web app in a real browser: Debian's Chromium through chromedriver, against real
//! `trainyard serve` and `trainyard worker` processes on loopback sockets and a
//! `#[sqlx::test]` database. What a person does, the test does: fill in the form, watch
//! the chart, open a comparison, draw a digit with the pointer.
//!
//! Each test saves a screenshot under `target/browser-screenshots/` when it fails; the
//! experiment and comparison tests also save the book's pictures there. The tests
//! print the latencies they see (`epoch stored -> point drawn`), which the book's
//! benchmarks report; they assert nothing about time beyond generous timeouts.

use crate::common;

use std::time::Duration;

use fantoccini::Locator;
use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use serde_json::{Value, json};
use sqlx::PgPool;

use common::browser::{Browser, js, one_at_a_time, page_problems, testid, until};
use common::procs::{Harness, Timing, eventually, status, submit};

/// A torch-cnn run whose epochs take long enough (about a second each in a test build)
/// to be watched one by one.
fn watched_torch(epochs: u32) -> Value {
    json!({"preset": "torch-cnn", "epochs": epochs, "device": "cpu",
           "dataset": {"train_limit": 3000, "test_limit": 500}})
}

/// Waits until the experiment's status (read from the database) is `want`.
async fn wait_status(pool: &PgPool, id: uuid::Uuid, want: &str, secs: u64) {
    eventually(secs, &format!("{id} {want}"), || async {
        (status(pool, id).await == want).then_some(())
    })
    .await;
}
/// The epochs the page drew, in the order it drew them.
async fn drawn_epochs(c: &fantoccini::Client) -> Vec<u64> {
    js(c, "window.trainyard.drawn.map(d => d.epoch)")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[sqlx::test]
async fn submitting_torch_cnn_from_the_form_draws_a_point_per_epoch_as_it_trains(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 1);
    let b = Browser::start().await;
    let epochs = 4;
    b.run("submit-form", |c| async move {
        c.goto(&format!("{base}/ui/new")).await.unwrap();
        let spec = watched_torch(epochs);
        testid(&c, "validation").await;
        c.execute(
            "const t = document.getElementById('spec'); t.value = arguments[0]; \
             t.dispatchEvent(new Event('input', {bubbles: true}));",
            vec![Value::from(serde_json::to_string_pretty(&spec).unwrap())],
        )
        .await
        .unwrap();
        c.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("from the form")
            .await
            .unwrap();
        // The debounced validation shows the layer table before anything is submitted,
        // and the job's memory estimate above it.
        testid(&c, "valid").await;
        let memory = testid(&c, "footprint").await.text().await.unwrap();
        assert!(
            memory.starts_with("Memory: about ") && memory.contains(" at the peak"),
            "{memory}"
        );
        c.find(Locator::Id("submit"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, 20, "location.pathname", |v| {
            v.as_str().unwrap_or("").starts_with("/ui/experiments/")
        })
        .await;
        // Watch the points arrive: every count from 1 to `epochs` is seen in turn.
        let mut seen = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        while seen.last() != Some(&epochs) {
            let n = js(&c, "window.trainyard.points").await.as_u64().unwrap() as u32;
            if seen.last() != Some(&n) {
                seen.push(n);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "points seen: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let grew: Vec<u32> = seen.iter().copied().filter(|n| *n > 0).collect();
        assert_eq!(
            grew,
            (1..=epochs).collect::<Vec<_>>(),
            "one point at a time"
        );
        assert_eq!(drawn_epochs(&c).await, [1, 2, 3, 4]);

        // From each epoch stored (the database's clock) to its point drawn (the page's).
        let id = js(&c, "location.pathname.split('/').pop()").await;
        let rows: Vec<Value> = reqwest::get(format!(
            "{base}/experiments/{}/metrics",
            id.as_str().unwrap()
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let drawn = js(&c, "window.trainyard.drawn").await;
        for (row, d) in rows.iter().zip(drawn.as_array().unwrap()) {
            let stored = chrono::DateTime::parse_from_rfc3339(row["recorded_at"].as_str().unwrap())
                .unwrap()
                .timestamp_micros() as f64
                / 1000.0;
            let ms = d["at"].as_f64().unwrap() - stored;
            eprintln!(
                "browser latency: epoch {} stored -> drawn {ms:.1} ms",
                row["epoch"]
            );
        }
        let expected = "Array.from(document.querySelectorAll('[data-testid=metrics-row]')).length";
        until(&c, 20, expected, |v| v == epochs).await;
        assert!(
            page_problems(&c).await.is_empty(),
            "{:?}",
            page_problems(&c).await
        );
    })
    .await;
    b.screenshot("experiment").await;
    b.close().await;
}

#[sqlx::test]
async fn compare_overlays_both_article_presets_and_lists_their_spec_difference(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 1);
    let http = reqwest::Client::new();
    let small = json!({"train_limit": 600, "test_limit": 200});
    let keras = submit(&http, &base, &json!({"preset": "keras-cnn", "name": "keras-cnn", "epochs": 3, "dataset": small, "device": "cpu"})).await;
    let torch = submit(&http, &base, &json!({"preset": "torch-cnn", "name": "torch-cnn", "epochs": 3, "dataset": small, "device": "cpu"})).await;
    wait_status(&pool, keras, "succeeded", 300).await;
    wait_status(&pool, torch, "succeeded", 300).await;
    let b = Browser::start().await;
    b.run("compare", |c| async move {
        c.goto(&format!("{base}/ui/compare?ids={keras},{torch}")).await.unwrap();
        testid(&c, "spec-diff").await;
        let paths = js(
            &c,
            "Array.from(document.querySelectorAll('[data-testid=diff-row]')).map(r => r.dataset.path)",
        )
        .await;
        for want in [
            "model.init",
            "batch_size",
            "dataset.resize",
            "dataset.normalize",
            "model.layers[-1].activation",
            "loss.formulation",
        ] {
            assert!(paths.as_array().unwrap().contains(&Value::from(want)), "{want} not in {paths}");
        }
        // Both experiments' points are on the chart: 3 epochs each.
        until(&c, 20, "window.trainyard.points", |v| v == 6).await;
        let legend = js(&c, "document.getElementById('chart-loss').innerText").await;
        let legend = legend.as_str().unwrap();
        assert!(legend.contains("keras-cnn") && legend.contains("torch-cnn"), "{legend}");
        assert!(page_problems(&c).await.is_empty(), "{:?}", page_problems(&c).await);
    })
    .await;
    // Tall enough for the spec difference under the curves.
    b.client.set_window_size(1280, 1500).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.screenshot("compare").await;
    b.close().await;
}

#[sqlx::test]
async fn a_digit_drawn_with_the_pointer_gets_ten_probabilities(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 1);
    let http = reqwest::Client::new();
    let id = submit(
        &http,
        &base,
        &json!({"preset": "torch-cnn", "epochs": 1, "device": "cpu",
        "dataset": {"train_limit": 2000, "test_limit": 100}}),
    )
    .await;
    wait_status(&pool, id, "succeeded", 120).await;
    let b = Browser::start().await;
    b.run("predict", |c| async move {
        c.goto(&format!("{base}/ui/predict?experiment={id}")).await.unwrap();
        let pad = testid(&c, "pad").await;
        // A "1": one stroke down the middle, as pointer events from a mouse.
        let to = |x: f64, y: f64, ms: u64| PointerAction::MoveToElement {
            element: pad.clone(),
            duration: Some(Duration::from_millis(ms)),
            x,
            y,
        };
        let stroke = MouseActions::new("mouse".into())
            .then(to(0.0, -90.0, 0))
            .then(PointerAction::Down { button: 0 })
            .then(to(2.0, -30.0, 150))
            .then(to(4.0, 40.0, 150))
            .then(to(5.0, 90.0, 150))
            .then(PointerAction::Up { button: 0 });
        c.perform_actions(stroke).await.unwrap();
        c.find(Locator::Id("predict")).await.unwrap().click().await.unwrap();
        testid(&c, "prediction").await;
        let bars = js(&c, "document.querySelectorAll('[data-testid=probability]').length").await;
        assert_eq!(bars, 10);
        // What was sent is an MNIST-like image: ink centred in 28x28.
        let ink = js(
            &c,
            "(() => { const d = document.getElementById('preview').getContext('2d').getImageData(0, 0, 28, 28).data; \
             let m = 0, sx = 0, sy = 0; for (let i = 0; i < 784; i++) { const v = d[4 * i]; m += v; sx += v * (i % 28); sy += v * Math.floor(i / 28); } \
             return [m, sx / m, sy / m]; })()",
        )
        .await;
        let (cx, cy) = (ink[1].as_f64().unwrap(), ink[2].as_f64().unwrap());
        assert!(ink[0].as_f64().unwrap() > 0.0, "no ink sent");
        assert!((cx - 14.0).abs() < 1.5 && (cy - 14.0).abs() < 1.5, "centre of mass at {cx},{cy}");
        assert!(page_problems(&c).await.is_empty(), "{:?}", page_problems(&c).await);
    })
    .await;
    b.close().await;
}

#[sqlx::test]
async fn a_page_following_a_run_continues_its_curve_across_a_server_restart(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    // The API on a fixed port (the page reconnects there), training in its own process.
    let (mut serve, base, bind) = h.serve_restartable("serve", 0);
    let _worker = h.worker("worker", 1, &[]);
    let http = reqwest::Client::new();
    let epochs = 6;
    let id = submit(&http, &base, &watched_torch(epochs)).await;
    let b = Browser::start().await;
    let h = &h;
    let serve = &mut serve;
    b.run("restart", |c| async move {
        c.goto(&format!("{base}/ui/experiments/{id}")).await.unwrap();
        until(&c, 120, "window.trainyard.points", |v| v.as_u64() >= Some(2)).await;
        serve.signal(libc::SIGTERM);
        serve.wait_exit(Duration::from_secs(20)).expect("serve stops on SIGTERM");
        let drawn_while_down = drawn_epochs(&c).await.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (again, _) = h.serve_on("serve-again", 0, &bind);
        until(&c, 240, "window.trainyard.points", |v| v == epochs).await;
        let drawn = drawn_epochs(&c).await;
        assert_eq!(drawn, (1..=epochs as u64).collect::<Vec<_>>(), "no gap, no repeat");
        assert!(
            drawn_while_down < epochs as usize,
            "the restart happened mid-run: {drawn_while_down} epochs were drawn while the server was down"
        );
        let rows = "Array.from(document.querySelectorAll('[data-testid=metrics-row]')).map(r => +r.dataset.epoch)";
        until(&c, 20, rows, |v| *v == json!((1..=epochs).collect::<Vec<_>>())).await;
        drop(again);
    })
    .await;
    b.close().await;
}

#[sqlx::test]
async fn names_with_markup_show_as_text_and_run_nothing(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 0);
    let http = reqwest::Client::new();
    let name = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">";
    let id = submit(
        &http,
        &base,
        &json!({"preset": "torch-cnn", "name": name, "tags": ["<b>tag</b>"]}),
    )
    .await;
    let other = submit(&http, &base, &json!({"preset": "keras-cnn", "name": name})).await;
    let b = Browser::start().await;
    b.run("markup", |c| async move {
        for (page, tags) in [
            ("/".to_string(), true),
            (format!("/ui/experiments/{id}"), true),
            // Names in the chart legends and the table of the comparison.
            (format!("/ui/compare?ids={id},{other}"), false),
        ] {
            c.goto(&format!("{base}{page}")).await.unwrap();
            until(
                &c,
                20,
                "document.body.innerText.includes('<script>')",
                |v| v == true,
            )
            .await;
            let text = js(&c, "document.body.innerText").await;
            assert!(
                text.as_str().unwrap().contains(name),
                "{page}: the name as text"
            );
            assert!(
                !tags || text.as_str().unwrap().contains("<b>tag</b>"),
                "{page}: the tag as text"
            );
            assert_eq!(js(&c, "window.pwned === undefined").await, true, "{page}");
            assert_eq!(
                js(
                    &c,
                    "document.querySelectorAll('main script, main img[src=x]').length"
                )
                .await,
                0
            );
        }
    })
    .await;
    b.close().await;
}

/// POSTs a sweep; its id.
async fn sweep(http: &reqwest::Client, base: &str, body: &Value) -> String {
    let r = http
        .post(format!("{base}/sweeps"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

#[sqlx::test]
async fn a_sweep_page_ranks_its_points_and_draws_a_mean_with_a_band_per_point(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 2);
    let http = reqwest::Client::new();
    let tiny = json!({"preset": "torch-cnn", "epochs": 2, "device": "cpu",
                      "dataset": {"train_limit": 300, "test_limit": 100}});
    let name = "<img src=x onerror=\"window.pwned = 1\">rates";
    let grid = sweep(
        &http,
        &base,
        &json!({"base": tiny, "grid": {"optimizer.learning_rate": [0.1, 0.001]},
                "repeats": 2, "name": "two rates, two repeats"}),
    )
    .await;
    // An ablation of two torch-cnn runs that differ in their rate and batch size.
    let a = submit(&http, &base, &tiny).await;
    let mut other = tiny.clone();
    other["optimizer"] = json!({"learning_rate": 0.1});
    other["batch_size"] = json!(64);
    let b_id = submit(&http, &base, &other).await;
    let ablation = sweep(
        &http,
        &base,
        &json!({"ablate": {"from": a, "to": b_id}, "repeats": 2, "name": name}),
    )
    .await;
    let b = Browser::start().await;
    let (base2, grid2) = (base.clone(), grid.clone());
    b.run("sweep", |c| async move {
        c.goto(&format!("{base}/ui/sweeps/{grid}")).await.unwrap();
        testid(&c, "ranking").await;
        // Live until every child has ended, then both points ranked, each from 2 runs.
        until(&c, 300, "document.querySelector('[data-testid=sweep-state]').innerText", |v| {
            v == "finished"
        })
        .await;
        let ranks = js(
            &c,
            "Array.from(document.querySelectorAll('[data-testid=rank-row]')).map(r => r.cells[0].innerText + '|' + r.cells[2].innerText)",
        )
        .await;
        assert_eq!(ranks, json!(["1|2", "2|2"]));
        // 4 children x 2 epochs drawn, each point as a mean with its band's two edges.
        until(&c, 20, "window.trainyard.points", |v| v == 8).await;
        let legend = js(&c, "document.getElementById('chart-loss').innerText").await;
        let legend = legend.as_str().unwrap();
        assert!(
            legend.contains("optimizer.learning_rate=0.1") && legend.contains("+sd"),
            "{legend}"
        );

        c.goto(&format!("{base}/ui/sweeps/{ablation}")).await.unwrap();
        testid(&c, "effects").await;
        let text = js(&c, "document.body.innerText").await;
        assert!(text.as_str().unwrap().contains(name), "the name as text");
        assert_eq!(js(&c, "window.pwned === undefined").await, true);
        until(&c, 300, "document.querySelector('[data-testid=sweep-state]').innerText", |v| {
            v == "finished"
        })
        .await;
        let effects = js(
            &c,
            "Array.from(document.querySelectorAll('[data-testid=effect-row]')).map(r => r.dataset.path).sort()",
        )
        .await;
        assert_eq!(effects, json!(["batch_size", "optimizer.learning_rate"]));
        until(&c, 20, "window.trainyard.points", |v| v == 16).await;

        c.goto(&format!("{base}/ui/sweeps")).await.unwrap();
        testid(&c, "sweeps").await;
        until(
            &c,
            20,
            "document.querySelectorAll('[data-testid=sweep-row]').length",
            |v| v == 2,
        )
        .await;
        assert_eq!(js(&c, "window.pwned === undefined").await, true);
        assert!(page_problems(&c).await.is_empty(), "{:?}", page_problems(&c).await);
    })
    .await;
    // The book's picture of a sweep.
    b.client.set_window_size(1280, 1400).await.unwrap();
    b.client
        .goto(&format!("{base2}/ui/sweeps/{grid2}"))
        .await
        .unwrap();
    testid(&b.client, "ranking").await;
    until(&b.client, 20, "window.trainyard.points", |v| v == 8).await;
    b.screenshot("sweep").await;
    b.close().await;
}
