-- Numeric ids of stream writer instances, for vector stream tokens
-- ("m<min>~<id>.<pos>"): names would not fit the token syntax, and ids
-- assigned once stay stable when the configured writer list changes.
CREATE TABLE instance_ids (
    instance_id    INTEGER PRIMARY KEY,
    instance_name  TEXT NOT NULL UNIQUE
);
