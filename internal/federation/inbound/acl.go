package inbound

import (
	"encoding/json"

	"ganglion/internal/federation/serveracl"
)

// serverACL is a room's m.room.server_acl as the endpoints check it; the
// rules live in serveracl, shared with the federation sender.
type serverACL struct{ serveracl.ACL }

func parseServerACL(content json.RawMessage) serverACL {
	return serverACL{serveracl.Parse(content)}
}

func (a serverACL) allows(server string) bool { return a.Allows(server) }
