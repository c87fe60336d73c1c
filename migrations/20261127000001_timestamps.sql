-- Wall-clock timestamps a client can measure the queue by.
--
-- `experiments.training_started_at`: when the current (or last) attempt's first training
-- batch began, i.e. after the worker claimed the experiment, loaded and prepared its data
-- and built the model. Minus `created_at` it is what the experiment waited for.
-- `epoch_metrics.recorded_at`: when the epoch's rows were written, the last step of the
-- transaction that stores the epoch (after its checkpoint), just before it commits. Rows
-- stored before this migration get their transaction's start, `created_at`.
ALTER TABLE experiments ADD COLUMN training_started_at timestamptz;

ALTER TABLE epoch_metrics ADD COLUMN recorded_at timestamptz;
UPDATE epoch_metrics SET recorded_at = created_at;
ALTER TABLE epoch_metrics ALTER COLUMN recorded_at SET NOT NULL,
                          ALTER COLUMN recorded_at SET DEFAULT clock_timestamp();
