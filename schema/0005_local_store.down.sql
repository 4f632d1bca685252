DROP TABLE local_store;
