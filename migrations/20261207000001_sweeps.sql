-- Issue 16: sweeps. A sweep is many experiments queued from one request (a grid, a
-- random search, an ablation of two experiments); each child records its point (the
-- fields it set on the base, and an ablation child's role) and its repeat.
CREATE TABLE sweeps (
    id uuid PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES accounts (id),
    kind text NOT NULL CHECK (kind IN ('grid', 'random', 'ablation')),
    -- The request as sent, but for name and tags.
    request jsonb NOT NULL,
    -- What the ranking orders by (an EpochMetrics field).
    metric text NOT NULL,
    repeats integer NOT NULL CHECK (repeats >= 1),
    -- An ablation's differences: those its children try ({path, from, to}), and those
    -- no child could (with why).
    changes jsonb NOT NULL DEFAULT '[]',
    skipped jsonb NOT NULL DEFAULT '[]',
    name text,
    tags text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sweeps_account ON sweeps (account_id, created_at DESC, id DESC);

ALTER TABLE experiments
    ADD COLUMN sweep_id uuid REFERENCES sweeps (id) ON DELETE SET NULL,
    ADD COLUMN sweep_point jsonb,
    ADD COLUMN sweep_repeat integer;
CREATE INDEX experiments_sweep ON experiments (sweep_id) WHERE sweep_id IS NOT NULL;
