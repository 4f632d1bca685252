DROP INDEX resource_claim_token;
ALTER TABLE resource DROP COLUMN claim_token;
