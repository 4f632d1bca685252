-- Fenced claims: each claim carries a token of its own, and completion,
-- release, heartbeat and sweep all match it, so a process that lost its
-- claim (swept while it stalled) can never touch the row that replaced it.
ALTER TABLE resource ADD COLUMN claim_token text;
CREATE INDEX resource_claim_token ON resource (claim_token) WHERE state = 'pending';
