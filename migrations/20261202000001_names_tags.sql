-- Names and tags: what people call their experiments and how they group them, so the
-- list can be searched (`?q=` on the name, `?tag=`) and pages can show something other
-- than an id. Neither is part of the spec: renaming never changes what was trained.
ALTER TABLE experiments
    ADD COLUMN name text CHECK (char_length(name) BETWEEN 1 AND 200),
    ADD COLUMN tags text[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(tags) <= 16 AND array_position(tags, NULL) IS NULL);
-- `tags @> ARRAY[$1]` (the list's `?tag=`) uses it.
CREATE INDEX experiments_tags ON experiments USING gin (tags);
