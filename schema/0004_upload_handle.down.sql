ALTER TABLE resource DROP COLUMN upload_handle;
