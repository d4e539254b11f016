-- Leaner rows (issue 14): a callback's body is stored once, in its request row. An event
-- whose payload is that body, or one member of it (rixapi's "data"), keeps no copy:
-- `payload_from` says where it is ('' the whole body, else the member's name) and
-- `payload` is NULL (see receiver.store.rows.event_values and read_event, which reads the
-- body by the request's primary key). Other payloads (polls, reshaped ones) stay as they were.

ALTER TABLE events ADD COLUMN payload_from TEXT;

-- Existing rows move forward when the stored payload is, character for character, the
-- minified body (what the receiver wrote for a compact body) or its "data" member; any
-- other row keeps its copy, which reads the same.
UPDATE events SET payload_from = '', payload = NULL
WHERE payload IS NOT NULL AND request_id IS NOT NULL
  AND payload = (
    SELECT CASE WHEN json_valid(CAST(r.body AS TEXT)) THEN json(CAST(r.body AS TEXT)) END
    FROM requests r WHERE r.id = events.request_id
  );

UPDATE events SET payload_from = 'data', payload = NULL
WHERE payload IS NOT NULL AND request_id IS NOT NULL
  AND payload = (
    SELECT CASE WHEN json_valid(CAST(r.body AS TEXT))
      AND json_type(CAST(r.body AS TEXT), '$.data') = 'object'
      THEN json_extract(CAST(r.body AS TEXT), '$.data') END
    FROM requests r WHERE r.id = events.request_id
  );
