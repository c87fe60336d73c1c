-- A worker claims only what it can run. An experiment whose spec asks for CUDA ("cuda" or
-- "cuda:N") is never claimed by a worker without a GPU, which could only fail it: it stays
-- queued until a CUDA worker takes it. The fact is derived from the spec, here, once.
ALTER TABLE experiments ADD COLUMN needs_cuda boolean NOT NULL
    GENERATED ALWAYS AS (coalesce(spec->>'device' LIKE 'cuda%', false)) STORED;
