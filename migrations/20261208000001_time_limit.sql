-- A job's time limit can end its run early too (stop_reason 'time_limit').
ALTER TABLE experiments DROP CONSTRAINT experiments_stop_reason_check;
ALTER TABLE experiments ADD CONSTRAINT experiments_stop_reason_check
    CHECK (stop_reason IN ('early_stopping', 'time_limit'));
