-- Events other servers built that this server must send on as a resident
-- server of the room (internal/federation/inbound, membership.go): a join,
-- leave or knock of a user of another server that came through our
-- send_join, send_leave or send_knock. The federation sender only sends
-- local users' events, and these. origin is the server that sent the event
-- to us, which needs no copy. A row is written before the event is
-- persisted, so the sender sees it whenever it reads the event.
CREATE TABLE federation_relayed_events (
    event_id  TEXT PRIMARY KEY,
    origin    TEXT NOT NULL
);
