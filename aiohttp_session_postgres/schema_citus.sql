-- Citus (schema.sql includes this part instead of the triggers): the table distributed by
-- id_hash, so that every statement naming one session runs on the one shard that holds it. A
-- distributed table has no triggers (Citus refuses them; allowed, they would fire on the worker
-- that holds the row and notify only that worker's listeners): the library sends the
-- notifications itself, from the coordinator. A table distributed already is left as it is; one
-- with rows keeps them (Citus copies them to the shards; the coordinator's own copy is then
-- emptied, as Citus advises).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = '{table}'::regclass AND partmethod = 'h') THEN
        DROP TRIGGER IF EXISTS {update_trigger} ON {table};
        DROP TRIGGER IF EXISTS {delete_trigger} ON {table};
        DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
        PERFORM create_distributed_table('{table}', 'id_hash');
        PERFORM truncate_local_data_after_distributing_table('{table}');
    END IF;
END
$$;
