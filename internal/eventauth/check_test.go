package eventauth_test

import (
	"errors"
	"strings"
	"testing"

	"ganglion/internal/eventauth"
)

// checkCase is one spec rule exercised in the room versions it applies to.
// The room is baseState() adjusted by setup; wantErr "" means allowed,
// otherwise a substring of the rejection reason.
type checkCase struct {
	name     string
	versions []string
	setup    roomSetup
	event    string
	wantErr  string
}

// Frequently used state.
const (
	publicRoom          = `{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"public"}}`
	knockRoom           = `{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"knock"}}`
	restrictedRoom      = `{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"restricted","allow":[{"type":"m.room_membership","room_id":"!space:a.test"}]}}`
	knockRestrictedRoom = `{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"knock_restricted","allow":[{"type":"m.room_membership","room_id":"!space:a.test"}]}}`
	carolInvited        = `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite"}}`
	carolKnocked        = `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`
	inviteLevel50       = `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"invite":50,"users":{"@alice:a.test":100,"@mod:a.test":50}}}`
	bobAt50             = `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":50}}}`
	tpiByBob            = `{"type":"m.room.third_party_invite","state_key":"tok","sender":"@bob:b.test","content":{"display_name":"c...","key_validity_url":"https://id.test/isvalid","public_key":"{{pubkey}}"}}`
	tpiInvite           = `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite","third_party_invite":{"display_name":"c...","signed":{"mxid":"@carol:c.test","sender":"@bob:b.test","token":"tok","signatures":{"id.test":{"ed25519:0":"{{sig}}"}}}}}}`
)

func withoutPL() roomSetup {
	return roomSetup{omit: []eventauth.StateKey{{Type: "m.room.power_levels"}}}
}

func checkCases() []checkCase {
	all := allVersions()
	return []checkCase{
		// Rule 1: m.room.create.
		{name: "create ok", versions: all,
			event: `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"creator":"@alice:a.test"}}`},
		{name: "create with prev_events rejected", versions: all,
			event:   `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"creator":"@alice:a.test"},"prev_events":["{{create}}"]}`,
			wantErr: "prev_events"},
		{name: "create room_id domain differs from sender's rejected", versions: all,
			event:   `{"type":"m.room.create","state_key":"","sender":"@alice:b.test","content":{"creator":"@alice:b.test"}}`,
			wantErr: "domain"},
		{name: "create unknown room_version rejected", versions: all,
			event:   `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"creator":"@alice:a.test","room_version":"999"}}`,
			wantErr: "unknown room_version"},
		{name: "create non-string room_version rejected", versions: all,
			event:   `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"creator":"@alice:a.test","room_version":10}}`,
			wantErr: "not a string"},
		{name: "create without creator rejected before v11", versions: versions(1, 10),
			event:   `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"room_version":"1"}}`,
			wantErr: "no creator"},
		{name: "create without creator ok in v11", versions: versions(11, 11),
			event: `{"type":"m.room.create","state_key":"","sender":"@alice:a.test","content":{"room_version":"11"}}`},

		// Rule 2.4 and 3.
		{name: "no create event in auth state rejected", versions: all,
			setup:   roomSetup{omit: []eventauth.StateKey{{Type: "m.room.create"}}},
			event:   `{"type":"m.room.message","sender":"@bob:b.test","content":{"body":"hi"}}`,
			wantErr: "no m.room.create"},
		{name: "m.federate false blocks a foreign join", versions: all,
			setup:   roomSetup{createExtra: `"m.federate":false`, state: []string{publicRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "not federated"},
		{name: "m.federate false allows a local join", versions: all,
			setup: roomSetup{createExtra: `"m.federate":false`, state: []string{publicRoom}},
			event: `{"type":"m.room.member","state_key":"@dave:a.test","sender":"@dave:a.test","content":{"membership":"join"}}`},
		{name: "m.federate false blocks inviting a foreign user", versions: all,
			setup:   roomSetup{createExtra: `"m.federate":false`},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@mod:a.test","content":{"membership":"invite"}}`,
			wantErr: "not federated"},

		// m.room.aliases.
		{name: "aliases for own server by plain member ok (v1-v5)", versions: versions(1, 5),
			event: `{"type":"m.room.aliases","state_key":"b.test","sender":"@bob:b.test","content":{"aliases":["#x:b.test"]}}`},
		{name: "aliases from a non-member ok (v1-v5)", versions: versions(1, 5),
			event: `{"type":"m.room.aliases","state_key":"c.test","sender":"@carol:c.test","content":{"aliases":["#x:c.test"]}}`},
		{name: "aliases for another server rejected (v1-v5)", versions: versions(1, 5),
			event:   `{"type":"m.room.aliases","state_key":"a.test","sender":"@bob:b.test","content":{"aliases":["#x:a.test"]}}`,
			wantErr: "does not match the sender's server"},
		{name: "aliases follow normal power rules from v6", versions: versions(6, 11),
			event:   `{"type":"m.room.aliases","state_key":"b.test","sender":"@bob:b.test","content":{"aliases":["#x:b.test"]}}`,
			wantErr: "below the level"},
		{name: "aliases by a powerful member ok from v6", versions: versions(6, 11),
			event: `{"type":"m.room.aliases","state_key":"a.test","sender":"@mod:a.test","content":{"aliases":["#x:a.test"]}}`},

		// m.room.member: join.
		{name: "first join by creator ok", versions: all, setup: roomSetup{bare: true},
			event: `{"type":"m.room.member","state_key":"@alice:a.test","sender":"@alice:a.test","content":{"membership":"join"},"prev_events":["{{create}}"]}`},
		{name: "creator's join not after create needs the join rules", versions: all, setup: roomSetup{bare: true},
			event:   `{"type":"m.room.member","state_key":"@alice:a.test","sender":"@alice:a.test","content":{"membership":"join"}}`,
			wantErr: "invite-only"},
		{name: "first join by non-creator rejected", versions: all, setup: roomSetup{bare: true},
			event:   `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"join"},"prev_events":["{{create}}"]}`,
			wantErr: "invite-only"},
		{name: "join public room ok", versions: all, setup: roomSetup{state: []string{publicRoom}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`},
		{name: "join public room while banned rejected", versions: all, setup: roomSetup{state: []string{publicRoom}},
			event:   `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@eve:e.test","content":{"membership":"join"}}`,
			wantErr: "banned"},
		{name: "join on behalf of another user rejected", versions: all, setup: roomSetup{state: []string{publicRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"join"}}`,
			wantErr: "on behalf"},
		{name: "join invite-only room without invite rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "invite-only"},
		{name: "join invite-only room after invite ok", versions: all, setup: roomSetup{state: []string{carolInvited}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`},
		{name: "re-join (profile change) by member ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"join","displayname":"Bob"}}`},
		{name: "join with unknown join rule rejected", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.join_rules","state_key":"","sender":"@alice:a.test","content":{"join_rule":"private"}}`}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "does not allow joining"},
		{name: "join knock room after invite ok (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom, carolInvited}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`},
		{name: "join knock room without invite rejected (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom, carolKnocked}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "invite-only"},
		{name: "join rule knock unknown before v7", versions: versions(1, 6), setup: roomSetup{state: []string{knockRoom, carolInvited}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "does not allow joining"},

		// Restricted joins.
		{name: "restricted join authorised by a member who may invite ok (v8+)", versions: versions(8, 11), setup: roomSetup{state: []string{restrictedRoom}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}}`},
		{name: "restricted join without authoriser rejected (v8+)", versions: versions(8, 11), setup: roomSetup{state: []string{restrictedRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`,
			wantErr: "no join_authorised_via_users_server"},
		{name: "restricted join authoriser without invite power rejected (v8+)", versions: versions(8, 11), setup: roomSetup{state: []string{restrictedRoom, inviteLevel50}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@bob:b.test"}}`,
			wantErr: "may not invite"},
		{name: "restricted join authoriser not joined rejected (v8+)", versions: versions(8, 11), setup: roomSetup{state: []string{restrictedRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@dave:a.test"}}`,
			wantErr: "not joined"},
		{name: "restricted join of invited user needs no authoriser (v8+)", versions: versions(8, 11), setup: roomSetup{state: []string{restrictedRoom, carolInvited}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join"}}`},
		{name: "restricted join rule unknown before v8", versions: versions(1, 7), setup: roomSetup{state: []string{restrictedRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}}`,
			wantErr: "does not allow joining"},
		{name: "knock_restricted join with authoriser ok (v10+)", versions: versions(10, 11), setup: roomSetup{state: []string{knockRestrictedRoom}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}}`},
		{name: "knock_restricted join rule unknown before v10", versions: versions(1, 9), setup: roomSetup{state: []string{knockRestrictedRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"join","join_authorised_via_users_server":"@mod:a.test"}}`,
			wantErr: "does not allow joining"},

		// Knocks.
		{name: "knock on knock room ok (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`},
		{name: "knock membership unknown before v7", versions: versions(1, 6), setup: roomSetup{state: []string{knockRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`,
			wantErr: "unknown membership"},
		{name: "knock on invite-only room rejected (v7+)", versions: versions(7, 11),
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`,
			wantErr: "does not allow knocking"},
		{name: "knock for another user rejected (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"knock"}}`,
			wantErr: "on behalf"},
		{name: "knock while banned rejected (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom}},
			event:   `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@eve:e.test","content":{"membership":"knock"}}`,
			wantErr: "while ban"},
		{name: "knock on knock_restricted room ok (v10+)", versions: versions(10, 11), setup: roomSetup{state: []string{knockRestrictedRoom}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`},
		{name: "knock on knock_restricted room rejected (v7-v9)", versions: versions(7, 9), setup: roomSetup{state: []string{knockRestrictedRoom}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"knock"}}`,
			wantErr: "does not allow knocking"},

		// Invites.
		{name: "invite by member ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite"}}`},
		{name: "invite by non-member rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@dave:a.test","sender":"@carol:c.test","content":{"membership":"invite"}}`,
			wantErr: "not joined"},
		{name: "invite of banned user rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@bob:b.test","content":{"membership":"invite"}}`,
			wantErr: "already ban"},
		{name: "invite of joined user rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@mod:a.test","sender":"@bob:b.test","content":{"membership":"invite"}}`,
			wantErr: "already join"},
		{name: "invite below invite level rejected", versions: all, setup: roomSetup{state: []string{inviteLevel50}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite"}}`,
			wantErr: "invite level"},
		{name: "invite at invite level ok", versions: all, setup: roomSetup{state: []string{inviteLevel50}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@mod:a.test","content":{"membership":"invite"}}`},

		// Third-party invites.
		{name: "third-party invite with valid signature ok", versions: all, setup: roomSetup{state: []string{tpiByBob}},
			event: tpiInvite},
		{name: "third-party invite with key in public_keys (url-safe, padded) ok", versions: all,
			setup: roomSetup{state: []string{`{"type":"m.room.third_party_invite","state_key":"tok","sender":"@bob:b.test","content":{"public_key":"bm90IGEga2V5","public_keys":[{"public_key":"{{pubkey_urlpad}}"}]}}`}},
			event: tpiInvite},
		{name: "third-party invite with bad signature rejected", versions: all, setup: roomSetup{state: []string{tpiByBob}},
			event:   strings.Replace(tpiInvite, "{{sig}}", "{{badsig}}", 1),
			wantErr: "no third_party_invite signature matches"},
		{name: "third-party invite with unknown token rejected", versions: all,
			event:   tpiInvite,
			wantErr: "no m.room.third_party_invite"},
		{name: "third-party invite mxid not state_key rejected", versions: all, setup: roomSetup{state: []string{tpiByBob}},
			event:   strings.Replace(tpiInvite, `"state_key":"@carol:c.test"`, `"state_key":"@dave:a.test"`, 1),
			wantErr: "mxid does not match"},
		{name: "third-party invite by someone else rejected", versions: all, setup: roomSetup{state: []string{tpiByBob}},
			event:   strings.Replace(tpiInvite, `"sender":"@bob:b.test","content"`, `"sender":"@mod:a.test","content"`, 1),
			wantErr: "did not send the m.room.third_party_invite"},
		{name: "third-party invite without signed rejected", versions: all, setup: roomSetup{state: []string{tpiByBob}},
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite","third_party_invite":{"display_name":"c..."}}}`,
			wantErr: "no signed"},
		{name: "third-party invite of banned user rejected", versions: all, setup: roomSetup{state: []string{tpiByBob,
			`{"type":"m.room.member","state_key":"@carol:c.test","sender":"@alice:a.test","content":{"membership":"ban"}}`}},
			event:   tpiInvite,
			wantErr: "banned"},

		// Leaves, kicks, bans.
		{name: "leave self ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"leave"}}`},
		{name: "reject invite (leave from invite) ok", versions: all, setup: roomSetup{state: []string{carolInvited}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"leave"}}`},
		{name: "retract knock ok (v7+)", versions: versions(7, 11), setup: roomSetup{state: []string{knockRoom, carolKnocked}},
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"leave"}}`},
		{name: "leave self without membership rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@carol:c.test","content":{"membership":"leave"}}`,
			wantErr: "may only leave"},
		{name: "banned user may not unban self", versions: all,
			event:   `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@eve:e.test","content":{"membership":"leave"}}`,
			wantErr: "may only leave"},
		{name: "kick with kick power ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@mod:a.test","content":{"membership":"leave"}}`},
		{name: "kick without kick power rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@mod:a.test","sender":"@bob:b.test","content":{"membership":"leave"}}`,
			wantErr: "may not kick"},
		{name: "kick of equal level rejected", versions: all, setup: roomSetup{state: []string{bobAt50}},
			event:   `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@mod:a.test","content":{"membership":"leave"}}`,
			wantErr: "may not kick"},
		{name: "kick by non-member rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@carol:c.test","content":{"membership":"leave"}}`,
			wantErr: "not joined"},
		{name: "ban with ban power ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@mod:a.test","content":{"membership":"ban"}}`},
		{name: "ban of an outsider ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@mod:a.test","content":{"membership":"ban"}}`},
		{name: "ban without ban power rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@mod:a.test","sender":"@bob:b.test","content":{"membership":"ban"}}`,
			wantErr: "may not ban"},
		{name: "ban of higher level rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@alice:a.test","sender":"@mod:a.test","content":{"membership":"ban"}}`,
			wantErr: "may not ban"},
		{name: "unban with ban power ok", versions: all,
			event: `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@mod:a.test","content":{"membership":"leave"}}`},
		{name: "unban with kick but not ban power rejected", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"ban":75,"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event:   `{"type":"m.room.member","state_key":"@eve:e.test","sender":"@mod:a.test","content":{"membership":"leave"}}`,
			wantErr: "unban"},
		{name: "unknown membership rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"membership":"lurk"}}`,
			wantErr: "unknown membership"},
		{name: "member event without membership rejected", versions: all,
			event:   `{"type":"m.room.member","state_key":"@bob:b.test","sender":"@bob:b.test","content":{"displayname":"x"}}`,
			wantErr: "no membership"},
		{name: "member event without state_key rejected", versions: all,
			event:   `{"type":"m.room.member","sender":"@bob:b.test","content":{"membership":"join"}}`,
			wantErr: "state_key"},

		// Non-membership events.
		{name: "message by member ok", versions: all,
			event: `{"type":"m.room.message","sender":"@bob:b.test","content":{"body":"hi"}}`},
		{name: "message by non-member rejected", versions: all,
			event:   `{"type":"m.room.message","sender":"@carol:c.test","content":{"body":"hi"}}`,
			wantErr: "sender is not joined"},
		{name: "message by invited user rejected", versions: all, setup: roomSetup{state: []string{carolInvited}},
			event:   `{"type":"m.room.message","sender":"@carol:c.test","content":{"body":"hi"}}`,
			wantErr: "sender is not joined"},
		{name: "message below its events level rejected", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"events":{"m.room.message":10},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event:   `{"type":"m.room.message","sender":"@bob:b.test","content":{"body":"hi"}}`,
			wantErr: "below the level"},
		{name: "state event below state_default rejected", versions: all,
			event:   `{"type":"m.room.name","state_key":"","sender":"@bob:b.test","content":{"name":"x"}}`,
			wantErr: "below the level"},
		{name: "state event at state_default ok", versions: all,
			event: `{"type":"m.room.name","state_key":"","sender":"@mod:a.test","content":{"name":"x"}}`},
		{name: "no power levels: creator may send state", versions: all, setup: withoutPL(),
			event: `{"type":"m.room.name","state_key":"","sender":"@alice:a.test","content":{"name":"x"}}`},
		{name: "no power levels: state_default is 50 for others", versions: all, setup: withoutPL(),
			event:   `{"type":"m.room.name","state_key":"","sender":"@mod:a.test","content":{"name":"x"}}`,
			wantErr: "below the level"},
		{name: "no power levels: members may send messages", versions: all, setup: withoutPL(),
			event: `{"type":"m.room.message","sender":"@bob:b.test","content":{"body":"hi"}}`},
		{name: "no power levels: members may invite", versions: all, setup: withoutPL(),
			event: `{"type":"m.room.member","state_key":"@carol:c.test","sender":"@bob:b.test","content":{"membership":"invite"}}`},
		{name: "state_key of another user rejected", versions: all,
			event:   `{"type":"m.custom","state_key":"@bob:b.test","sender":"@mod:a.test","content":{}}`,
			wantErr: "must be the sender's"},
		{name: "state_key of own user ok", versions: all,
			event: `{"type":"m.custom","state_key":"@mod:a.test","sender":"@mod:a.test","content":{}}`},
		{name: "third_party_invite event with invite power ok", versions: all,
			event: `{"type":"m.room.third_party_invite","state_key":"tok2","sender":"@bob:b.test","content":{"public_key":"{{pubkey}}"}}`},
		{name: "third_party_invite event without invite power rejected", versions: all, setup: roomSetup{state: []string{inviteLevel50}},
			event:   `{"type":"m.room.third_party_invite","state_key":"tok2","sender":"@bob:b.test","content":{"public_key":"{{pubkey}}"}}`,
			wantErr: "invite level"},

		// m.room.power_levels.
		{name: "power levels: raise own level above own rejected", versions: all,
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":75}}}`,
			wantErr: "above their own level"},
		{name: "power levels: demote user of equal level rejected", versions: all, setup: roomSetup{state: []string{bobAt50}},
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":0}}}`,
			wantErr: "at or above their own"},
		{name: "power levels: remove user of equal level rejected", versions: all, setup: roomSetup{state: []string{bobAt50}},
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "at or above their own"},
		{name: "power levels: self-demote ok", versions: all,
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":10}}}`},
		{name: "power levels: promote to own level ok", versions: all,
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":50}}}`},
		{name: "power levels: creator demotes moderator ok", versions: all,
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":100}}}`},
		{name: "power levels: set ban above own rejected", versions: all,
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"ban":60,"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "set ban above"},
		{name: "power levels: adding a key at its default value is a change", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"events":{"m.room.power_levels":10},"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":10}}}`}},
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@bob:b.test","content":{"ban":50,"events":{"m.room.power_levels":10},"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":10}}}`,
			wantErr: "set ban above"},
		{name: "power levels: change kick from above own rejected", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"kick":75,"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"kick":50,"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "from a level above"},
		{name: "power levels: events entry above own rejected", versions: all,
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"events":{"m.room.topic":51},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "events m.room.topic"},
		{name: "power levels: events entry within own ok", versions: all,
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"events":{"m.room.topic":50},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`},
		{name: "power levels: string values accepted before v10", versions: versions(1, 9),
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"ban":"50","events":{"m.room.topic":" 40"},"users":{"@alice:a.test":"100","@mod:a.test":"+5_0"}}}`},
		{name: "power levels: string values rejected from v10", versions: versions(10, 11),
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"ban":"50","users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "not an integer"},
		{name: "power levels: string user level rejected from v10", versions: versions(10, 11),
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":"50"}}}`,
			wantErr: "not an integer"},
		{name: "power levels: first event string values accepted before v10", versions: versions(1, 9), setup: withoutPL(),
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":"100"}}}`},
		{name: "power levels: first event string values rejected from v10", versions: versions(10, 11), setup: withoutPL(),
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":"100"}}}`,
			wantErr: "not an integer"},
		{name: "power levels: unparseable string rejected", versions: versions(1, 9),
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"kick":"fifty","users":{"@alice:a.test":100}}}`,
			wantErr: "not an integer"},
		{name: "power levels: float truncated before v6", versions: versions(1, 5),
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50,"@bob:b.test":50.9}}}`},
		{name: "power levels: users key not a user id rejected", versions: all,
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"users":{"@alice:a.test":100,"mod":50}}}`,
			wantErr: "not a user id"},
		{name: "power levels: notifications change checked from v6", versions: versions(6, 11),
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"notifications":{"room":75},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"notifications":{"room":40},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "notifications room"},
		{name: "power levels: notifications change unchecked before v6", versions: versions(1, 5),
			setup: roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"notifications":{"room":75},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event: `{"type":"m.room.power_levels","state_key":"","sender":"@mod:a.test","content":{"notifications":{"room":40},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`},
		{name: "power levels: by plain member rejected", versions: all,
			event:   `{"type":"m.room.power_levels","state_key":"","sender":"@bob:b.test","content":{"users":{"@alice:a.test":100,"@mod:a.test":50}}}`,
			wantErr: "below the level"},

		// m.room.redaction.
		{name: "redaction of same-server event without redact power ok (v1-v2)", versions: versions(1, 2),
			event: `{"type":"m.room.redaction","event_id":"$red:b.test","sender":"@bob:b.test","redacts":"$target:b.test","content":{}}`},
		{name: "redaction of other-server event without redact power rejected (v1-v2)", versions: versions(1, 2),
			event:   `{"type":"m.room.redaction","event_id":"$red:b.test","sender":"@bob:b.test","redacts":"$target:a.test","content":{}}`,
			wantErr: "may not redact"},
		{name: "redaction with redact power ok", versions: all,
			event: `{"type":"m.room.redaction","sender":"@mod:a.test","redacts":"$target:b.test","content":{"redacts":"$target:b.test"}}`},
		{name: "redaction deferred to serving time from v3", versions: versions(3, 11),
			event: `{"type":"m.room.redaction","sender":"@bob:b.test","redacts":"$target:a.test","content":{"redacts":"$target:a.test"}}`},
		{name: "redaction still needs its events level", versions: all,
			setup:   roomSetup{state: []string{`{"type":"m.room.power_levels","state_key":"","sender":"@alice:a.test","content":{"events":{"m.room.redaction":10},"users":{"@alice:a.test":100,"@mod:a.test":50}}}`}},
			event:   `{"type":"m.room.redaction","sender":"@bob:b.test","redacts":"$target:b.test","content":{"redacts":"$target:b.test"}}`,
			wantErr: "below the level"},
	}
}

func TestCheck(t *testing.T) {
	perVersion := map[string]int{}
	for _, tc := range checkCases() {
		if len(tc.versions) == 0 {
			t.Fatalf("case %q names no room versions", tc.name)
		}
		for _, v := range tc.versions {
			perVersion[v]++
			t.Run("v"+v+"/"+tc.name, func(t *testing.T) {
				r := newRoom(t, v, tc.setup)
				ev := r.event(t, tc.event)
				err := eventauth.Check(ev, r.state)
				if tc.wantErr == "" {
					if err != nil {
						t.Fatalf("want allowed, got %v", err)
					}
					return
				}
				var na *eventauth.NotAllowedError
				if !errors.As(err, &na) {
					t.Fatalf("want *NotAllowedError containing %q, got %v", tc.wantErr, err)
				}
				if !strings.Contains(na.Reason, tc.wantErr) {
					t.Fatalf("want reason containing %q, got %q", tc.wantErr, na.Reason)
				}
			})
		}
	}
	t.Logf("%d cases; per room version: %v", len(checkCases()), perVersion)
}
