-- Housekeeping of ended experiments (src/store/housekeeping.rs).
--
-- `swept_at`: when housekeeping emptied the optimizer state of the experiment's
-- checkpoints (nothing resumes an ended experiment). The partial index holds only the
-- ended experiments not yet swept, so a round finds its work without scanning the rest.
ALTER TABLE experiments ADD COLUMN swept_at timestamptz;
CREATE INDEX experiments_unswept ON experiments (finished_at)
    WHERE finished_at IS NOT NULL AND swept_at IS NULL;
-- Ended experiments by age, for the optional retention.
CREATE INDEX experiments_finished ON experiments (finished_at) WHERE finished_at IS NOT NULL;
