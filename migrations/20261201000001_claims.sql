-- Who held each attempt, and when: the lease history that makes "no experiment ever ran
-- on two workers at once" checkable from the database alone.
--
-- A claim inserts its row; the statement that ends the attempt (finished, handed back on
-- shutdown, rescued after the lease expired) closes it, in the same transaction as the
-- status change. Every claim after the first happens after the previous one was closed,
-- so the rows of one experiment never overlap.
CREATE TABLE experiment_claims (
    experiment_id     uuid        NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    attempt           integer     NOT NULL CHECK (attempt >= 1),
    owner             text        NOT NULL,
    claimed_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at       timestamptz,
    released_as       text CHECK (released_as IN
                          ('succeeded', 'failed', 'cancelled', 'handed_back', 'rescued')),
    CHECK ((released_at IS NULL) = (released_as IS NULL)),
    PRIMARY KEY (experiment_id, attempt)
);

-- The attempt that wrote each epoch (NULL for rows stored before this migration).
ALTER TABLE epoch_metrics ADD COLUMN attempt integer;
