-- Every change to a ready resource (a deletion, a patch, an operator's own
-- UPDATE) is announced on the channel morpheo_resource, with the row's
-- "kind/uuid" as it was: the nodes that keep records in memory forget them
-- (PostgreSQL delivers it once the transaction commits, to every listener).
CREATE FUNCTION morpheo_resource_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('morpheo_resource', OLD.kind || '/' || OLD.uuid::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER resource_changed
    AFTER UPDATE OR DELETE ON resource
    FOR EACH ROW WHEN (OLD.state = 'ready')
    EXECUTE FUNCTION morpheo_resource_changed();
