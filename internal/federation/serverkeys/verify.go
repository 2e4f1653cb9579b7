package serverkeys

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"ganglion/internal/events"
)

// RequiredSigners lists the servers whose signatures an event must carry,
// per the spec's "Validating hashes and signatures on received events":
//   - the sender's server, except for an invite made from a third-party
//     invite (m.room.member, membership invite, content.third_party_invite),
//     which the server that holds the 3pid invite may send on the sender's
//     behalf;
//   - for room versions 1 and 2 (event ids carrying a domain), the server
//     that minted the event id;
//   - for a restricted join (room versions with restricted join rules),
//     the server of content.join_authorised_via_users_server.
//
// The invited server's signature on an invite (added by PUT /invite) is not
// required: it is the inviting server's to check when it asks for it.
func RequiredSigners(ev *events.Event) ([]string, error) {
	set := map[string]bool{}
	rv := ev.Version()
	if rv == nil {
		return nil, errors.New("event without room version")
	}
	thirdPartyInvite := ev.Type() == "m.room.member" && ev.Membership() == "invite" &&
		hasContentKey(ev.Content(), "third_party_invite")
	if !thirdPartyInvite {
		d, err := domainOf(ev.Sender())
		if err != nil {
			return nil, fmt.Errorf("sender %q: %w", ev.Sender(), err)
		}
		set[d] = true
	}
	if rv.Format == events.FormatV1 {
		d, err := domainOf(ev.EventID())
		if err != nil {
			return nil, fmt.Errorf("event id %q: %w", ev.EventID(), err)
		}
		set[d] = true
	}
	if rv.RestrictedJoinRule && ev.Type() == "m.room.member" && ev.Membership() == "join" {
		var c struct {
			Via string `json:"join_authorised_via_users_server"`
		}
		if json.Unmarshal(ev.Content(), &c) == nil && c.Via != "" {
			d, err := domainOf(c.Via)
			if err != nil {
				return nil, fmt.Errorf("join_authorised_via_users_server %q: %w", c.Via, err)
			}
			set[d] = true
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	sort.Strings(out)
	return out, nil
}

func hasContentKey(content []byte, key string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(content, &m) != nil {
		return false
	}
	v, ok := m[key]
	return ok && string(v) != "null"
}

// domainOf returns the server name of a user id, room id or v1 event id:
// everything after the first colon.
func domainOf(id string) (string, error) {
	_, d, ok := strings.Cut(id, ":")
	if !ok || d == "" {
		return "", errors.New("no server name")
	}
	return d, nil
}

// VerifyEventSignatures checks that ev carries a valid signature from every
// server RequiredSigners names, with keys found by f. For room versions
// that enforce key validity (v5+) a key must be valid at the event's
// origin_server_ts; for earlier versions any known key will do (time 0, as
// Synapse). Of a server's ed25519 signatures, those whose key is found
// must all verify, and at least one must; signatures by keys that cannot be
// found are skipped. The error wraps events.ErrSignatureMissing or
// events.ErrSignatureInvalid (reject the event), or ErrKeyNotFound /
// ErrKeyNotValid when no usable key was found.
func VerifyEventSignatures(ctx context.Context, f VerifyKeyFinder, ev *events.Event) error {
	signers, err := RequiredSigners(ev)
	if err != nil {
		return fmt.Errorf("verify signatures of %s: %w: %w", ev.EventID(), events.ErrMalformedEvent, err)
	}
	var w struct {
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(ev.JSON(), &w); err != nil {
		return fmt.Errorf("verify signatures of %s: %w: %w", ev.EventID(), events.ErrMalformedEvent, err)
	}
	var atTS int64
	if ev.Version().EnforceKeyValidity {
		atTS = ev.OriginServerTS()
	}
	for _, server := range signers {
		err := verifyServerSignatures(ctx, f, w.Signatures[server], server, atTS, func(keyID string, pub ed25519.PublicKey) error {
			return events.VerifyEventSignature(ev, server, keyID, pub)
		})
		if err != nil {
			return fmt.Errorf("verify signatures of %s: %w", ev.EventID(), err)
		}
	}
	return nil
}

// VerifyJSONSignatures checks that a signed JSON object (a key answer, a
// third-party invite's signed block, any object signed as the spec's
// "Signing JSON" says) carries a valid signature by server, made with a key
// valid at atTS (0: any known key), with the rules of
// VerifyEventSignatures.
func VerifyJSONSignatures(ctx context.Context, f VerifyKeyFinder, raw []byte, server string, atTS int64) error {
	var w struct {
		Signatures map[string]map[string]json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(raw, &w); err != nil {
		return fmt.Errorf("verify json signatures of %s: %w: %w", server, events.ErrSignatureInvalid, err)
	}
	err := verifyServerSignatures(ctx, f, w.Signatures[server], server, atTS, func(keyID string, pub ed25519.PublicKey) error {
		return events.VerifyJSON(raw, server, keyID, pub)
	})
	if err != nil {
		return fmt.Errorf("verify json signatures of %s: %w", server, err)
	}
	return nil
}

// verifyServerSignatures applies the rule both verifiers share: of server's
// ed25519 signatures, every one whose key is found (valid at atTS) must
// verify, and at least one must be found.
func verifyServerSignatures(ctx context.Context, f VerifyKeyFinder, sigs map[string]json.RawMessage, server string,
	atTS int64, verify func(keyID string, pub ed25519.PublicKey) error) error {
	var ids []string
	for id := range sigs {
		if strings.HasPrefix(id, "ed25519:") {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("%w: none from %s", events.ErrSignatureMissing, server)
	}
	sort.Strings(ids)
	verified := false
	var lookupErrs []error
	for _, id := range ids {
		pub, err := f.VerifyKey(ctx, server, id, atTS)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			lookupErrs = append(lookupErrs, err)
			continue
		}
		if err := verify(id, pub); err != nil {
			return err
		}
		verified = true
	}
	if !verified {
		return fmt.Errorf("no usable key of %s: %w", server, errors.Join(lookupErrs...))
	}
	return nil
}

// VerifyEventSignatures is the package function with this keyring.
func (k *Keyring) VerifyEventSignatures(ctx context.Context, ev *events.Event) error {
	return VerifyEventSignatures(ctx, k, ev)
}
