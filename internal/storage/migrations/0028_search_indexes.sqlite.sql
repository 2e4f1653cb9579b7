-- Indexes for issue 14's search targets (bench: -scenario search,userdir).
--
-- SQLite keeps LIKE over user_directory words (no tsvector); see the
-- PostgreSQL file. Every directory search leaves out deactivated users; they
-- are few, so a partial index finds them without reading the users table.
CREATE INDEX users_deactivated ON users (user_id) WHERE deactivated;
