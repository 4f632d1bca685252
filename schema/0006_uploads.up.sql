-- Resumable uploads (/uploads/{id}, tus and the IETF draft): what one is
-- between its requests, so that any node can take the next one.  The
-- resource it will be is claimed at creation (kind, uuid, claim_token: a
-- pending resource row) and kept by this row, not by heartbeats, until the
-- upload ends or expires; a partial upload (tus concatenation) claims
-- nothing.  store_state is the blob store's own description of the write.
-- A request appending holds the busy lease (busy_token, busy_until), taken
-- by a conditional update: two never run at once, on any nodes.
CREATE TABLE upload (
    id           text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{16,64}$'),
    owner        text        NOT NULL,
    kind         text,
    uuid         uuid,
    claim_token  text,
    blob_key     text        NOT NULL,
    length       bigint      CHECK (length >= 0),
    "offset"     bigint      NOT NULL DEFAULT 0
        CHECK ("offset" >= 0 AND (length IS NULL OR "offset" <= length)),
    store_state  text        NOT NULL,
    concat       text        NOT NULL DEFAULT 'none'
        CHECK (concat IN ('none', 'partial', 'final')),
    metadata     jsonb       NOT NULL DEFAULT '{}',
    sha256       text        CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    concluded    boolean     NOT NULL DEFAULT false,
    expires      timestamptz NOT NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    updated      timestamptz NOT NULL DEFAULT now(),
    busy_token   text,
    busy_until   timestamptz,
    CHECK ((concat = 'partial') = (kind IS NULL))
);
CREATE INDEX upload_owner ON upload (owner);
CREATE INDEX upload_expires ON upload (expires);
CREATE INDEX upload_claim_token ON upload (claim_token) WHERE claim_token IS NOT NULL;
CREATE INDEX upload_blob_key ON upload (blob_key);
