-- Every resource of every kind: one row, claimed as 'pending' when an
-- upload starts and made 'ready' once its blob is committed.
CREATE TABLE resource (
    kind             text        NOT NULL
        CHECK (kind IN ('algo', 'data', 'model', 'prediction', 'problem')),
    uuid             uuid        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'ready')),
    name             text        CHECK (char_length(name) <= 255),
    description      text        CHECK (char_length(description) <= 255),
    algo             uuid,
    size             bigint      CHECK (size >= 0),
    sha256           text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    blob_key         text,
    timestamp_upload bigint      NOT NULL DEFAULT EXTRACT(EPOCH FROM now())::bigint,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    seq              bigserial   NOT NULL,
    PRIMARY KEY (kind, uuid),
    CHECK (state = 'pending' OR (size IS NOT NULL AND sha256 IS NOT NULL AND blob_key IS NOT NULL))
);

-- Lists: newest first, per kind, ready rows only.
CREATE INDEX resource_newest ON resource (kind, timestamp_upload DESC, seq DESC)
    WHERE state = 'ready';
-- Models by algo.
CREATE INDEX resource_algo ON resource (algo) WHERE algo IS NOT NULL;
