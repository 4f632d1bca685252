-- The handle of a claim's write in progress, when only a handle finds what
-- it leaves in the blob store (a Google Cloud Storage resumable session is
-- known by its URL alone): recorded by the uploading process as soon as the
-- store gives it, so that whichever process sweeps the claim of a killed
-- one can cancel the session.
ALTER TABLE resource ADD COLUMN upload_handle text;
