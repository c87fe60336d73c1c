-- Experiments, their per-epoch metrics, checkpoints and event log.
--
-- State machine (enforced by CHECK constraints and by every UPDATE's WHERE clause):
--   queued -> running -> succeeded | failed | cancelled
--   queued -> cancelled                       (cancel before any worker claims it)
--   running -> queued                         (lease expired and rescued, or handed back on shutdown)
-- `attempt` is the fencing token: a claim increments it, and every write a worker makes
-- names the attempt it holds, so a worker whose lease was taken over changes nothing.

CREATE TABLE experiments (
    id                uuid PRIMARY KEY,
    spec              jsonb       NOT NULL,
    status            text        NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority          integer     NOT NULL DEFAULT 0,
    -- Claims so far; the current one is the fencing token of the running worker.
    attempt           integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- Leases that expired and were rescued (crashed or stalled workers).
    rescues           integer     NOT NULL DEFAULT 0 CHECK (rescues >= 0),
    max_rescues       integer     NOT NULL DEFAULT 3 CHECK (max_rescues >= 0),
    lease_owner       text,
    lease_expires_at  timestamptz,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    epochs_done       integer     NOT NULL DEFAULT 0 CHECK (epochs_done >= 0),
    best_epoch        integer,
    error             text,
    idempotency_key   text        UNIQUE,
    request_hash      bytea,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

-- What a worker claims: the queued experiments, highest priority first, oldest first.
CREATE INDEX experiments_claimable ON experiments (priority DESC, created_at, id)
    WHERE status = 'queued';
-- What the rescuer scans: running experiments by lease expiry.
CREATE INDEX experiments_leases ON experiments (lease_expires_at) WHERE status = 'running';
-- Listing, newest first, with keyset pagination (optionally by status).
CREATE INDEX experiments_newest ON experiments (created_at DESC, id DESC);
CREATE INDEX experiments_status_newest ON experiments (status, created_at DESC, id DESC);

CREATE TABLE epoch_metrics (
    experiment_id     uuid        NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    epoch             integer     NOT NULL CHECK (epoch >= 1),
    train_loss        double precision NOT NULL,
    train_accuracy    double precision NOT NULL,
    val_loss          double precision,
    val_accuracy      double precision,
    test_loss         double precision,
    test_accuracy     double precision,
    train_seconds     double precision NOT NULL,
    images_per_second double precision NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, epoch)
);

CREATE TABLE checkpoints (
    experiment_id     uuid        NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    epoch             integer     NOT NULL CHECK (epoch >= 1),
    weights           bytea       NOT NULL,
    optimizer         bytea       NOT NULL,
    sha256            bytea       NOT NULL CHECK (length(sha256) = 32),
    size_bytes        bigint      NOT NULL CHECK (size_bytes >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, epoch)
);

-- The durable events a curve follower replays: status changes and finished epochs, in
-- order. `id` is the SSE event id (Last-Event-ID resumes after it).
CREATE TABLE experiment_events (
    id                bigserial   PRIMARY KEY,
    experiment_id     uuid        NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    kind              text        NOT NULL CHECK (kind IN ('status', 'epoch')),
    data              jsonb       NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX experiment_events_by_experiment ON experiment_events (experiment_id, id);
