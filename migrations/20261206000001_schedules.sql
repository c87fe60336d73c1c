-- Issue 16: the learning rate each epoch trained with (the spec's lr_schedule), and why
-- an experiment ended before its last epoch (early stopping).
ALTER TABLE epoch_metrics ADD COLUMN learning_rate double precision;
ALTER TABLE experiments ADD COLUMN stop_reason text
    CHECK (stop_reason IN ('early_stopping'));
