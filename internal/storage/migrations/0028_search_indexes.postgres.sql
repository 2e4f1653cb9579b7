-- Indexes for issue 14's search targets (bench: -scenario search,userdir).
--
-- Word-prefix search of the user directory through GIN indexes
-- (internal/userdir). words holds lower-cased words separated by single
-- spaces; as a tsvector of those words taken as they are (array_to_tsvector:
-- no parser, no stemming, no stop words), "some word starts with t" is
-- vector @@ 't':*, which a GIN index answers without reading every row, where
-- words LIKE '% t%' read them all. The vector is a stored generated column
-- (PostgreSQL 12+), not an index expression: when the planner still picks a
-- sequential scan, it tests a stored value instead of building the vector
-- of every row (measured: 2.5 times slower than the LIKE it replaced).
--
-- A tsvector lexeme holds at most 2,047 bytes (longer ones are silently
-- mangled), so words are cut to 200 characters, as the Go code now writes
-- them (userdir.maxWordRunes).
UPDATE user_directory SET words = regexp_replace(words, '(\S{200})\S+', '\1', 'g') WHERE words ~ '\S{201}';
UPDATE user_directory_members SET words = regexp_replace(words, '(\S{200})\S+', '\1', 'g') WHERE words ~ '\S{201}';
ALTER TABLE user_directory ADD COLUMN vector TSVECTOR
    GENERATED ALWAYS AS (array_to_tsvector(array_remove(string_to_array(btrim(words), ' '), ''))) STORED;
ALTER TABLE user_directory_members ADD COLUMN vector TSVECTOR
    GENERATED ALWAYS AS (array_to_tsvector(array_remove(string_to_array(btrim(words), ' '), ''))) STORED;
CREATE INDEX user_directory_vector ON user_directory USING GIN (vector);
CREATE INDEX user_directory_members_vector ON user_directory_members USING GIN (vector);
-- Every directory search leaves out deactivated users; they are few, so a
-- partial index finds them without reading the users table.
CREATE INDEX users_deactivated ON users (user_id) WHERE deactivated;

-- Full-text search ordered by recent (internal/search): with an index on
-- the position alone, the planner can walk the newest entries backwards and
-- stop at the page's limit when the terms are common (a word in half the
-- messages), instead of fetching and sorting every match from the GIN
-- index; rare terms still go through the GIN index. SQLite's event_search
-- is keyed by stream_ordering already.
CREATE INDEX event_search_stream ON event_search (stream_ordering);
