-- Leaner rows (issue 14): a callback's body is stored once, in its request row. An event
-- whose payload is that body, or one member of it (rixapi's "data"), keeps no copy:
-- `payload_from` says where it is ('' the whole body, else the member's name) and
-- `payload` is NULL (see receiver.store.rows.event_values and read_event, which reads the
-- body by the request's primary key). Mirrors sqlite/0011_lean_rows.sql.

ALTER TABLE events ADD COLUMN payload_from TEXT;

-- Existing rows move forward when the stored payload equals the body, or its "data"
-- member, as JSON; a body that is not UTF-8 JSON PostgreSQL can read keeps its copy.
CREATE FUNCTION pg_temp.lean_payload_from(payload TEXT, body BYTEA) RETURNS TEXT
LANGUAGE plpgsql AS $$
DECLARE
    kept JSONB;
    whole JSONB;
BEGIN
    kept := payload::jsonb;
    whole := convert_from(body, 'UTF8')::jsonb;
    IF whole = kept THEN
        RETURN '';
    END IF;
    IF jsonb_typeof(whole) = 'object' AND whole -> 'data' = kept THEN
        RETURN 'data';
    END IF;
    RETURN NULL;
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

UPDATE events e SET payload_from = moved.payload_from, payload = NULL
FROM (
    SELECT k.seq, pg_temp.lean_payload_from(k.payload, r.body) AS payload_from
    FROM events k JOIN requests r ON r.id = k.request_id
    WHERE k.payload IS NOT NULL
) moved
WHERE e.seq = moved.seq AND moved.payload_from IS NOT NULL;

DROP FUNCTION pg_temp.lean_payload_from(TEXT, BYTEA);
