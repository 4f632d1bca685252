-- The local blob store this database serves, at most one: its identity (the
-- uuid of the id file kept with its blobs), and when, by which host and for
-- which directory it was first registered, to tell a node that brings
-- another one.  Nodes on a remote store do not register.
CREATE TABLE local_store (
    store_id      uuid        PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now(),
    host          text        NOT NULL,
    path          text        NOT NULL
);
CREATE UNIQUE INDEX local_store_one ON local_store ((true));
