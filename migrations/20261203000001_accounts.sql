-- Accounts and API keys: who is asking, and whose each experiment is.
--
-- A key is shown once, when it is made; only its SHA-256 is kept. `lookup` is the first
-- 12 hex digits of the secret (48 of its 256 bits): enough to find the row by index, far
-- too few to guess the key, and shown in key lists so people can tell their keys apart.
CREATE TABLE accounts (
    id                  uuid        PRIMARY KEY,
    name                text        NOT NULL UNIQUE
                        CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- Quotas (NULL: none). Queued and FLOPs are refused at submission (429); running
    -- waits in the queue.
    max_queued          integer     CHECK (max_queued >= 0),
    max_running         integer     CHECK (max_running >= 0),
    max_flops_per_day   double precision CHECK (max_flops_per_day >= 0)
);

CREATE TABLE api_keys (
    id                  uuid        PRIMARY KEY,
    account_id          uuid        NOT NULL REFERENCES accounts (id),
    lookup              text        NOT NULL UNIQUE CHECK (lookup ~ '^[0-9a-f]{12}$'),
    hash                bytea       NOT NULL CHECK (length(hash) = 32),
    admin               boolean     NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz,
    revoked_at          timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Browser sign-ins: the cookie holds a random token, the table its SHA-256. A session
-- lives no longer than its key: revoking the key ends it.
CREATE TABLE sessions (
    hash                bytea       PRIMARY KEY CHECK (length(hash) = 32),
    key_id              uuid        NOT NULL REFERENCES api_keys (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);

-- Experiments made before accounts existed belong to `default`, the account that
-- `--auth off` acts as.
INSERT INTO accounts (id, name) VALUES ('00000000-0000-0000-0000-000000000000', 'default');

ALTER TABLE experiments ADD COLUMN account_id uuid REFERENCES accounts (id);
UPDATE experiments SET account_id = '00000000-0000-0000-0000-000000000000';
ALTER TABLE experiments ALTER COLUMN account_id SET NOT NULL;
-- Training FLOPs the spec asks for (forward and backward over every epoch's images):
-- what the per-day FLOPs quota counts.
ALTER TABLE experiments ADD COLUMN train_flops double precision NOT NULL DEFAULT 0;

-- An Idempotency-Key is the account's own: another account's identical key is another
-- request, and must not learn that the key was used.
ALTER TABLE experiments DROP CONSTRAINT experiments_idempotency_key_key;
CREATE UNIQUE INDEX experiments_idempotency ON experiments (account_id, idempotency_key);

-- The fair claim: per account, the head of its queue (priority, then age).
CREATE INDEX experiments_account_queue ON experiments (account_id, priority DESC, created_at, id)
    WHERE status = 'queued';
-- Running experiments per account (the claim's fairness and the running quota).
CREATE INDEX experiments_account_running ON experiments (account_id) WHERE status = 'running';
-- Listing one account's experiments, newest first.
CREATE INDEX experiments_account_newest ON experiments (account_id, created_at DESC, id DESC);
-- The FLOPs quota's window.
CREATE INDEX experiments_account_created ON experiments (account_id, created_at);

-- Who did what: the account behind each creation, cancel request and deletion. A
-- deletion's event outlives the experiment, so the log no longer cascades; deleting an
-- experiment deletes its other events in the same transaction.
ALTER TABLE experiment_events ADD COLUMN account_id uuid REFERENCES accounts (id);
ALTER TABLE experiment_events DROP CONSTRAINT experiment_events_experiment_id_fkey;
ALTER TABLE experiment_events DROP CONSTRAINT experiment_events_kind_check;
ALTER TABLE experiment_events ADD CONSTRAINT experiment_events_kind_check
    CHECK (kind IN ('status', 'epoch', 'cancel_requested', 'deleted'));
