-- Objections to proactive exchanges (CRPA L114-8 II): a citizen (by subject key) objects to one consumer, to one
-- dataset, or to both at once. NULL in consumer or dataset means "any".
CREATE TABLE objections (
    id          uuid PRIMARY KEY,
    subject_key text NOT NULL,
    consumer    text,
    dataset     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (consumer IS NOT NULL OR dataset IS NOT NULL),
    UNIQUE NULLS NOT DISTINCT (subject_key, consumer, dataset)
);
CREATE INDEX objections_subject ON objections (subject_key);
