DROP INDEX resource_blob_key;
DROP INDEX resource_pending;
DROP INDEX resource_name;
DROP INDEX resource_newest;
CREATE INDEX resource_newest ON resource (kind, timestamp_upload DESC, seq DESC)
    WHERE state = 'ready';
ALTER TABLE resource
    DROP COLUMN content_type,
    DROP COLUMN filename,
    DROP COLUMN claimed_by,
    DROP COLUMN heartbeat;
