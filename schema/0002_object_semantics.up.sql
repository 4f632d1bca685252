-- What an object store keeps besides the bytes: the blob's content type and
-- file name.  Who holds a pending claim, and when it last said so, so that
-- claims of a process that died can be swept.  Lists in completion order.
ALTER TABLE resource
    ADD COLUMN content_type text,
    ADD COLUMN filename     text,
    ADD COLUMN claimed_by   text,
    ADD COLUMN heartbeat    timestamptz NOT NULL DEFAULT now();

DROP INDEX resource_newest;
CREATE INDEX resource_newest ON resource (kind, seq DESC) WHERE state = 'ready';
CREATE INDEX resource_name ON resource (kind, name text_pattern_ops) WHERE state = 'ready';
CREATE INDEX resource_pending ON resource (claimed_by, heartbeat) WHERE state = 'pending';
CREATE INDEX resource_blob_key ON resource (blob_key);
