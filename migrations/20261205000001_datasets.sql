-- Uploaded datasets (POST /datasets).
--
-- The decoded tensors are stored once per content: `dataset_blobs` is keyed by the SHA-256
-- of the tensors and labels (with their shape), so the same data uploaded twice, by one
-- account or by two, is stored once, and every worker on every host reads it from here.
-- A `datasets` row is an account's named view of a blob: its class names, how its test
-- split came about, and its per-class counts. A blob goes with its last dataset row.
CREATE TABLE dataset_blobs (
    sha256              text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    channels            integer     NOT NULL CHECK (channels IN (1, 3)),
    height              integer     NOT NULL CHECK (height BETWEEN 1 AND 256),
    width               integer     NOT NULL CHECK (width BETWEEN 1 AND 256),
    train_len           integer     NOT NULL CHECK (train_len > 0),
    test_len            integer     NOT NULL CHECK (test_len > 0),
    -- u8 pixels, image after image, CHW; labels one byte per image.
    train_images        bytea       NOT NULL,
    train_labels        bytea       NOT NULL CHECK (length(train_labels) = train_len),
    test_images         bytea       NOT NULL,
    test_labels         bytea       NOT NULL CHECK (length(test_labels) = test_len),
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (length(train_images) = train_len * channels * height * width),
    CHECK (length(test_images) = test_len * channels * height * width)
);

CREATE TABLE datasets (
    id                  uuid        PRIMARY KEY,
    account_id          uuid        NOT NULL REFERENCES accounts (id),
    name                text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    sha256              text        NOT NULL REFERENCES dataset_blobs (sha256),
    format              text        NOT NULL CHECK (format IN ('folders', 'idx', 'csv')),
    -- By label.
    class_names         jsonb       NOT NULL CHECK (jsonb_typeof(class_names) = 'array'),
    train_counts        jsonb       NOT NULL CHECK (jsonb_typeof(train_counts) = 'array'),
    test_counts         jsonb       NOT NULL CHECK (jsonb_typeof(test_counts) = 'array'),
    -- null: uploaded; else the fraction held out of the training images, and its seed.
    held_out            double precision CHECK (held_out > 0 AND held_out < 1),
    held_out_seed       bigint,
    upload_bytes        bigint      NOT NULL CHECK (upload_bytes >= 0),
    resized             integer     NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_account_newest ON datasets (account_id, created_at DESC, id DESC);
CREATE INDEX datasets_sha256 ON datasets (sha256);

-- The dataset an experiment trains on, and what it gives the model (shape and class
-- names), fixed at submission. A dataset in use by a queued or running experiment cannot
-- be deleted; once they have ended it can, and they keep `data`.
ALTER TABLE experiments ADD COLUMN dataset_id uuid REFERENCES datasets (id) ON DELETE SET NULL;
ALTER TABLE experiments ADD COLUMN data jsonb;
CREATE INDEX experiments_dataset ON experiments (dataset_id) WHERE dataset_id IS NOT NULL;
-- Pixels do not compress much and are read in slices (a picture of a few samples per
-- class): keep them uncompressed out of line, so a slice reads only its own chunks.
ALTER TABLE dataset_blobs ALTER COLUMN train_images SET STORAGE EXTERNAL;
ALTER TABLE dataset_blobs ALTER COLUMN test_images SET STORAGE EXTERNAL;
