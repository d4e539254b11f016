-- What we answered each stored request and how long the answer took (receive -> answer
-- sent), for the request inspector. Written after the answer, in batches, by
-- receiver.answers: NULL until then, and for good when the process died before a flush.

ALTER TABLE requests ADD COLUMN answer_status INTEGER;
ALTER TABLE requests ADD COLUMN answer_ms REAL;

-- Totals that outlive the rows they count (retention deletes deliveries), kept by the
-- store so every process, and a `receiver replay` on the database, adds to the same one.
-- `replays`: deliveries put back to pending by a replay, exported as receiver_replays_total.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0
);
INSERT INTO counters (name, value) VALUES ('replays', 0);
