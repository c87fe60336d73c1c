//! The fair claim at scale: 10,000 queued experiments over 100 accounts.
//!
//! Fills a fresh database (`trainyard_claim_scale` on the server of $DATABASE_URL, dropped
//! and migrated anew) with `--accounts` accounts of `--queued` queued experiments each,
//! priorities mixed, submissions interleaved across accounts; half the accounts run two
//! experiments already, and a tenth of those are at a `max_running` quota of 2, so the
//! claim's running counts and quota filter have work. Then, alternating, `--reps` times:
//!
//!   - `Store::claim`: the worker's whole claim (transaction, statement, claim row, event,
//!     commit), the claimed experiment put back in the queue afterwards (not timed);
//!   - the fair claim statement alone (a copy of `src/store/queue.rs`'s), rolled back;
//!   - the single-queue statement it replaced (before accounts: priority, then age, over
//!     every queued experiment), rolled back: the reference.
//!
//! The copied statement is checked to pick what `Store::claim` picks. Each is also shown
//! once under `EXPLAIN (ANALYZE, BUFFERS)`. Times are wall clock at the client, loopback
//! included, in milliseconds.
//!
//!     CARGO_TARGET_DIR=/work/target-release cargo run --release --example claim_scale -- \
//!         [--accounts 100] [--queued 100] [--reps 500]

use std::time::Instant;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};
use trainyard::store::Store;
use uuid::Uuid;

/// The claim statement of `src/store/queue.rs` (`RUNNING`, `FAIR_NEXT`, `claim_next`) as it
/// was when the book's figures were measured, before the `needs_cuda` filter (one more
/// boolean test per candidate row).
const FAIR: &str = "WITH running AS (
        SELECT account_id, count(*) AS n FROM experiments WHERE status = 'running'
        GROUP BY account_id
    ), heads AS (
        SELECT h.id, coalesce(r.n, 0) AS n, h.priority, h.created_at
        FROM accounts a
        LEFT JOIN running r ON r.account_id = a.id
        CROSS JOIN LATERAL (
            SELECT q.id, q.priority, q.created_at FROM experiments q
            WHERE q.account_id = a.id AND q.status = 'queued'
            ORDER BY q.priority DESC, q.created_at, q.id LIMIT 1
        ) h
        WHERE a.max_running IS NULL OR coalesce(r.n, 0) < a.max_running
    ),
    next AS (
        SELECT x.id FROM experiments x JOIN heads h ON h.id = x.id
        WHERE x.status = 'queued'
        ORDER BY h.n, h.priority DESC, h.created_at, h.id
        FOR UPDATE OF x SKIP LOCKED LIMIT 1
    )
    UPDATE experiments e SET status = 'running', attempt = e.attempt + 1,
        lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
        started_at = coalesce(e.started_at, now()), training_started_at = NULL,
        updated_at = now()
    FROM next WHERE e.id = next.id
    RETURNING e.id";

/// The claim statement before accounts (commit f05898f's parent).
const SINGLE_QUEUE: &str = "WITH next AS (
        SELECT id FROM experiments WHERE status = 'queued'
        ORDER BY priority DESC, created_at, id
        FOR UPDATE SKIP LOCKED LIMIT 1
    )
    UPDATE experiments e SET status = 'running', attempt = e.attempt + 1,
        lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
        started_at = coalesce(e.started_at, now()), training_started_at = NULL,
        updated_at = now()
    FROM next WHERE e.id = next.id
    RETURNING e.id";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// One statement's time, rolled back; returns (ms, the id it claimed).
async fn rolled_back(pool: &PgPool, sql: &str) -> anyhow::Result<(f64, Uuid)> {
    let mut tx = pool.begin().await?;
    let t = Instant::now();
    let (id,): (Uuid,) = sqlx::query_as(sql)
        .bind("bench")
        .bind(30.0f64)
        .fetch_one(&mut *tx)
        .await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    tx.rollback().await?;
    Ok((ms, id))
}

async fn explain(pool: &PgPool, name: &str, sql: &str) -> anyhow::Result<()> {
    let sql = sql.replace("$1", "'bench'").replace("$2", "30.0");
    let mut tx = pool.begin().await?;
    let rows: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    println!("\nEXPLAIN ANALYZE, {name}:");
    for (line,) in rows {
        println!("  {line}");
    }
    Ok(())
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!(
        "  {name:<52} n {:>4}  median {:>6.2}  p99 {:>6.2}  max {:>6.2}  mean {:>6.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        ms[ms.len() - 1],
        mean
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let accounts = arg("--accounts", 100);
    let queued = arg("--queued", 100);
    let reps = arg("--reps", 500);
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    let (base, _) = server.rsplit_once('/').expect("a database URL");
    let url = format!("{base}/trainyard_claim_scale");

    let admin = PgPool::connect(&server).await?;
    admin
        .execute("DROP DATABASE IF EXISTS trainyard_claim_scale WITH (FORCE)")
        .await?;
    admin.close().await;
    // Creates the database and applies the migrations, as `trainyard migrate` does.
    trainyard::server::connect_and_migrate(&url, 2, std::time::Duration::from_secs(60))
        .await?
        .pool()
        .close()
        .await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let store = Store::from_pool(pool.clone());

    let t = Instant::now();
    sqlx::query(
        "INSERT INTO accounts (id, name, max_running)
         SELECT gen_random_uuid(), 'account-' || a, CASE WHEN a % 10 = 0 THEN 2 END
         FROM generate_series(0, $1 - 1) a",
    )
    .bind(accounts as i32)
    .execute(&pool)
    .await?;
    // Submissions interleaved across accounts, one a second; one in five with a priority.
    sqlx::query(
        "INSERT INTO experiments (id, account_id, spec, priority, created_at, train_flops)
         SELECT gen_random_uuid(), a.id, '{}'::jsonb,
                CASE WHEN (i + a.n) % 5 = 0 THEN (i + a.n) % 3 ELSE 0 END,
                now() - make_interval(secs => ($2 * $1 - (i * $1 + a.n))::double precision),
                1e8
         FROM (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM accounts
               WHERE name LIKE 'account-%') a
         CROSS JOIN generate_series(0, $2 - 1) i",
    )
    .bind(accounts as i64)
    .bind(queued as i64)
    .execute(&pool)
    .await?;
    // Half the accounts run two (their oldest), those at a quota of 2 included.
    sqlx::query(
        "UPDATE experiments SET status = 'running', attempt = 1, lease_owner = 'elsewhere',
            lease_expires_at = now() + interval '1 hour', started_at = now()
         WHERE id IN (
            SELECT id FROM (
                SELECT e.id, row_number() OVER (PARTITION BY e.account_id ORDER BY e.created_at) AS k,
                       a.name
                FROM experiments e JOIN accounts a ON a.id = e.account_id
            ) r
            WHERE k <= 2 AND (substring(name from 9))::int % 2 = 0)",
    )
    .execute(&pool)
    .await?;
    pool.execute("VACUUM ANALYZE").await?;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM experiments GROUP BY 1 ORDER BY 1")
            .fetch_all(&pool)
            .await?;
    println!(
        "{accounts} accounts x {queued} experiments, filled in {:.1}s: {counts:?}",
        t.elapsed().as_secs_f64()
    );

    // The copy is the real statement: both pick the same experiment.
    let (_, copied) = rolled_back(&pool, FAIR).await?;
    let claimed = store.claim("bench", 30.0, false).await?.expect("a claim");
    anyhow::ensure!(
        copied == claimed.id,
        "the copied statement picks {copied}, Store::claim {}: copy src/store/queue.rs again",
        claimed.id
    );
    put_back(&pool, claimed.id).await?;

    for (name, sql) in [("fair", FAIR), ("single queue", SINGLE_QUEUE)] {
        explain(&pool, name, sql).await?;
    }

    let (mut whole, mut fair, mut single) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps {
        let t = Instant::now();
        let c = store.claim("bench", 30.0, false).await?.expect("a claim");
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        put_back(&pool, c.id).await?;
        fair.push(rolled_back(&pool, FAIR).await?.0);
        single.push(rolled_back(&pool, SINGLE_QUEUE).await?.0);
        // Each claim and its undoing leave dead row versions behind; autovacuum would
        // clear them in a real queue, where claimed experiments do not come back.
        if i % 50 == 49 {
            pool.execute("VACUUM experiments, experiment_claims, experiment_events")
                .await?;
        }
    }
    println!("\n{reps} claims each, alternating (client wall clock, loopback):");
    summary("Store::claim (whole claim, committed)", whole);
    summary("fair claim statement (now), rolled back", fair);
    summary(
        "single-queue statement (before accounts), rolled back",
        single,
    );
    Ok(())
}

/// Puts a claimed experiment back as it was: queued, its claim and event gone.
async fn put_back(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE experiments SET status = 'queued', attempt = attempt - 1, lease_owner = NULL,
            lease_expires_at = NULL, started_at = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM experiment_claims WHERE experiment_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM experiment_events WHERE experiment_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
