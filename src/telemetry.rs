//! What the process is doing, as Prometheus metrics: the one registry that the HTTP layer
//! and the workers both record into, and the text that `GET /metrics` serves.
//!
//! Why a leaf module with a process-wide registry: the API and the workers are separate
//! layers that must not know each other (see the crate docs), yet one scrape has to show
//! both. So each records into this module through small functions named for what
//! happened (`job_claimed`, `http_request`, ...), and neither depends on the other. It
//! uses nothing else of the crate. Metric names, help texts and buckets live here only,
//! so the exposition stays consistent and `promtool check metrics` stays quiet.
//!
//! Two kinds of figures: counters and histograms of events in *this process* (claims,
//! epochs, requests), which reset when it restarts, as Prometheus expects; and gauges of
//! the shared state read at scrape time ([`Scrape`]: experiments by status from the
//! database, open curve streams from the server). Those are built afresh per scrape in
//! a registry of their own, so two concurrent scrapes never see each other's half-set
//! values, and a worker process that went away leaves no stale label behind.
//!
//! A `trainyard worker` process serves no HTTP, so its counters are not scraped; the
//! database-derived gauges of any `serve` process still show what it is doing.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The content type of the exposition (the classic text format, version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `route` label of a request that matched no route (its raw path would let any
/// client create label values without bound).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request latencies, from a millisecond to ten seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// An epoch's training time: a tiny slice on a GPU to a full dataset on the CPU.
const EPOCH_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Training throughput, images per second.
const THROUGHPUT_BUCKETS: [f64; 11] = [
    100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0, 250000.0,
];
/// Images in one forward pass of `/predict` (at most 64 by default, 4,096 configured).
const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

struct Metrics {
    registry: Registry,
    jobs_claimed: IntCounter,
    jobs_rescued: IntCounter,
    jobs_failed: IntCounter,
    epoch_seconds: Histogram,
    images_per_second: Histogram,
    predict_requests: IntCounterVec,
    predict_seconds: Histogram,
    predict_batch_images: Histogram,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("a valid counter"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, Histogram::with_opts(opts).expect("a valid histogram"))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    Metrics {
        jobs_claimed: counter(
            &r,
            "trainyard_jobs_claimed_total",
            "Experiments claimed by this process's workers.",
        ),
        jobs_rescued: counter(
            &r,
            "trainyard_jobs_rescued_total",
            "Experiments whose lease had expired, requeued (or ended) by this process's lease rescue.",
        ),
        jobs_failed: counter(
            &r,
            "trainyard_jobs_failed_total",
            "Experiments this process's workers ended as failed.",
        ),
        epoch_seconds: histogram(
            &r,
            "trainyard_epoch_duration_seconds",
            "Wall time of an epoch's training steps (evaluation and storing excluded), per epoch trained here.",
            &EPOCH_BUCKETS,
        ),
        images_per_second: histogram(
            &r,
            "trainyard_training_images_per_second",
            "Training throughput of an epoch trained here, in images per second.",
            &THROUGHPUT_BUCKETS,
        ),
        predict_requests: counter_vec(
            &r,
            "trainyard_predict_requests_total",
            "POST /predict requests that reached the handler, by response status.",
            &["status"],
        ),
        predict_seconds: histogram(
            &r,
            "trainyard_predict_duration_seconds",
            "Time to answer POST /predict, from the handler's start to its response.",
            &LATENCY_BUCKETS,
        ),
        predict_batch_images: histogram(
            &r,
            "trainyard_predict_batch_images",
            "Images per forward pass of the /predict batcher.",
            &BATCH_BUCKETS,
        ),
        http_requests: counter_vec(
            &r,
            "trainyard_http_requests_total",
            "HTTP requests by method, route template and response status.",
            &["method", "route", "status"],
        ),
        http_seconds: register(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "trainyard_http_request_duration_seconds",
                    "Time from a request's arrival at its route to its response's headers (a stream's body is not included).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            )
            .expect("a valid histogram"),
        ),
        registry: r,
    }
});

/// A worker claimed an experiment.
pub fn job_claimed() {
    METRICS.jobs_claimed.inc();
}

/// The lease rescue requeued or ended `n` experiments.
pub fn jobs_rescued(n: u64) {
    METRICS.jobs_rescued.inc_by(n);
}

/// A worker ended an experiment as failed.
pub fn job_failed() {
    METRICS.jobs_failed.inc();
}

/// A worker trained an epoch in `train_seconds` at `images_per_second`.
pub fn epoch_trained(train_seconds: f64, images_per_second: f64) {
    METRICS.epoch_seconds.observe(train_seconds);
    METRICS.images_per_second.observe(images_per_second);
}

/// `/predict` answered with `status` after `took`.
pub fn predict_answered(status: u16, took: Duration) {
    METRICS
        .predict_requests
        .with_label_values(&[status.to_string()])
        .inc();
    METRICS.predict_seconds.observe(took.as_secs_f64());
}

/// The batcher ran a forward pass over `images` images.
pub fn predict_batch(images: usize) {
    METRICS.predict_batch_images.observe(images as f64);
}

/// An HTTP request to `route` (a route template, or [`UNMATCHED_ROUTE`]) was answered
/// with `status` after `took`. `method` must come from a fixed set (see
/// [`method_label`]).
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    METRICS
        .http_requests
        .with_label_values(&[method, route, &status.to_string()])
        .inc();
    METRICS
        .http_seconds
        .with_label_values(&[method, route])
        .observe(took.as_secs_f64());
}

/// The `method` label: the standard methods by name, anything else as `other` (a client
/// may send any token as a method).
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// The gauges read at scrape time, by whoever serves the scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// What the database says, or `None` when it could not be read.
    pub database: Option<DatabaseState>,
    /// Curve streams open now, and the most allowed.
    pub curve_streams_open: usize,
    pub curve_streams_limit: usize,
}

/// The shared state of the queue, as the database holds it.
#[derive(Debug, Clone, Default)]
pub struct DatabaseState {
    /// Experiments per status; every status should be listed, with 0 where none.
    pub by_status: Vec<(String, i64)>,
    /// How long the oldest queued experiment has waited (0 when none is queued).
    pub oldest_queued_seconds: f64,
    /// Running experiments per worker process.
    pub running_by_worker: Vec<(String, i64)>,
}

fn gauge_family(r: &Registry, name: &str, help: &str, value: f64) {
    register(r, Gauge::new(name, help).expect("a valid gauge")).set(value);
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, label: &str, values: &[(String, i64)]) {
    let g = register(
        r,
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid gauge"),
    );
    for (l, v) in values {
        g.with_label_values(&[l.as_str()]).set(*v);
    }
}

/// The scrape-time gauges as metric families.
fn scrape_families(s: &Scrape) -> Vec<MetricFamily> {
    let r = Registry::new();
    let streams = register(
        &r,
        IntGauge::new(
            "trainyard_curve_streams_open",
            "Curve (SSE) streams this server has open.",
        )
        .expect("a valid gauge"),
    );
    streams.set(s.curve_streams_open as i64);
    let limit = register(
        &r,
        IntGauge::new(
            "trainyard_curve_streams_limit",
            "The most curve streams this server keeps open at once.",
        )
        .expect("a valid gauge"),
    );
    limit.set(s.curve_streams_limit as i64);
    gauge_family(
        &r,
        "trainyard_database_up",
        "Whether this scrape could read the database (1) or not (0: its gauges are missing).",
        if s.database.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(db) = &s.database {
        int_gauge_vec(
            &r,
            "trainyard_experiments",
            "Experiments by status, every account's, read from the database at scrape time.",
            "status",
            &db.by_status,
        );
        gauge_family(
            &r,
            "trainyard_queue_oldest_wait_seconds",
            "How long the oldest queued experiment has waited since its submission (0 when none is queued).",
            db.oldest_queued_seconds,
        );
        int_gauge_vec(
            &r,
            "trainyard_worker_running_experiments",
            "Running experiments per worker process (the name in its leases), read from the database at scrape time.",
            "worker",
            &db.running_by_worker,
        );
    }
    r.gather()
}

/// The whole exposition: this process's counters and histograms with the scrape-time
/// gauges of `scrape`, in the Prometheus text format ([`CONTENT_TYPE`]).
pub fn render(scrape: &Scrape) -> String {
    let mut families = METRICS.registry.gather();
    families.extend(scrape_families(scrape));
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("the text format encodes any metric family");
    String::from_utf8(out).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines of `text` that start with `prefix`.
    fn samples<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn scrape_gauges_list_every_status_and_worker_given() {
        let text = render(&Scrape {
            database: Some(DatabaseState {
                by_status: vec![("queued".into(), 3), ("running".into(), 1)],
                oldest_queued_seconds: 12.5,
                running_by_worker: vec![("host-7".into(), 1)],
            }),
            curve_streams_open: 2,
            curve_streams_limit: 10,
        });
        assert_eq!(
            samples(&text, "trainyard_experiments{"),
            [
                "trainyard_experiments{status=\"queued\"} 3",
                "trainyard_experiments{status=\"running\"} 1"
            ]
        );
        assert_eq!(
            samples(&text, "trainyard_queue_oldest_wait_seconds "),
            ["trainyard_queue_oldest_wait_seconds 12.5"]
        );
        assert_eq!(
            samples(&text, "trainyard_worker_running_experiments{"),
            ["trainyard_worker_running_experiments{worker=\"host-7\"} 1"]
        );
        assert_eq!(
            samples(&text, "trainyard_curve_streams_open "),
            ["trainyard_curve_streams_open 2"]
        );
        assert_eq!(
            samples(&text, "trainyard_database_up "),
            ["trainyard_database_up 1"]
        );
    }

    #[test]
    fn a_scrape_without_the_database_says_so_and_omits_its_gauges() {
        let text = render(&Scrape {
            database: None,
            curve_streams_open: 0,
            curve_streams_limit: 10,
        });
        assert_eq!(
            samples(&text, "trainyard_database_up "),
            ["trainyard_database_up 0"]
        );
        assert!(samples(&text, "trainyard_experiments").is_empty(), "{text}");
        assert!(samples(&text, "trainyard_curve_streams_limit 10").len() == 1);
    }

    #[test]
    fn families_come_out_sorted_by_name_with_one_header_each() {
        http_request("GET", "/healthz", 200, Duration::from_millis(3));
        let text = render(&Scrape::default());
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(names.contains(&"trainyard_http_requests_total"), "{text}");
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("BREW"), "other");
    }
}
