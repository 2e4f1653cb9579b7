-- The user directory (internal/userdir). Written only by the instance named
-- by update_user_directory_from_worker (main by default), which follows the
-- events stream, except user_directory's rows for local users' global
-- profiles, which the profile write itself keeps in step (same transaction).
--
-- words is the searchable text: the lower-cased words of the display name and
-- of the user id, space-separated, with a leading and trailing space, so a
-- word-prefix match is words LIKE '% prefix%' on both engines.

-- Global profiles of local users (and, with federation, remote users).
CREATE TABLE user_directory (
    user_id       TEXT PRIMARY KEY,
    display_name  TEXT,
    avatar_url    TEXT,
    words         TEXT NOT NULL
);

-- Rooms the directory knows, and whether they make their members visible to
-- everyone (join rule public or history world_readable, as Synapse).
CREATE TABLE user_directory_rooms (
    room_id    TEXT PRIMARY KEY,
    is_public  BOOLEAN NOT NULL
);

-- Joined members per room with their per-room profile: a per-room display
-- name is searchable by the people who can see that room's member list.
CREATE TABLE user_directory_members (
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    display_name  TEXT,
    avatar_url    TEXT,
    words         TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX user_directory_members_user ON user_directory_members (user_id);

-- How far the updater has applied the events stream. No row means the
-- directory has never been built: the updater rebuilds it from current
-- state first. Written in the same transaction as the changes it covers,
-- so a killed updater resumes exactly where it committed.
CREATE TABLE user_directory_stream_pos (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    stream_id  BIGINT NOT NULL
);
