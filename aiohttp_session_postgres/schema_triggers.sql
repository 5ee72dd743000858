-- One PostgreSQL (schema.sql includes this part): the change notifications that keep the optional
-- in-process cache coherent across processes.
--
-- Payload: the id hash in hex, then ':' and the new version, for a change of data; the hex
-- alone for a deletion; '*' when the table is truncated. Touches (version unchanged) and the
-- sweeper's deletions of rows already expired notify nothing: every cache checks deadlines
-- itself, and a sweep of a million rows must not become a million notifications.
CREATE OR REPLACE FUNCTION {notify_function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify({channel}, '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify({channel}, encode(OLD.id_hash, 'hex'));
    ELSE
        PERFORM pg_notify({channel}, encode(NEW.id_hash, 'hex') || ':' || NEW.version);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS {update_trigger} ON {table};
CREATE TRIGGER {update_trigger} AFTER UPDATE ON {table}
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION {notify_function}();

DROP TRIGGER IF EXISTS {delete_trigger} ON {table};
CREATE TRIGGER {delete_trigger} AFTER DELETE ON {table}
    FOR EACH ROW WHEN ({live_old})
    EXECUTE FUNCTION {notify_function}();

DROP TRIGGER IF EXISTS {truncate_trigger} ON {table};
CREATE TRIGGER {truncate_trigger} AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify_function}();
