// Package replication carries stream updates between the processes of a
// fleet: the Redis pub/sub doorbell (text commands, Synapse's wire format)
// and the HTTP replication endpoints (internal RPC). The database stays the
// truth; a lost Redis message is caught up from it, and a position heard on
// Redis is checked against it (or the writer) before anyone believes it:
// whoever can publish on Redis is not trusted (see Replicator.believe).
package replication

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Command is one replication command: a single line "NAME args".
type Command interface {
	Name() string
	// args renders everything after "NAME ".
	args() (string, error)
}

// Encode renders a command as its wire line (no trailing newline).
func Encode(c Command) (string, error) {
	a, err := c.args()
	if err != nil {
		return "", fmt.Errorf("encode %s: %w", c.Name(), err)
	}
	line := c.Name()
	if a != "" {
		line += " " + a
	}
	if strings.ContainsAny(line, "\n\r") {
		return "", fmt.Errorf("encode %s: newline in command", c.Name())
	}
	return line, nil
}

// RData carries one row of a stream. Rows of one stream id beyond the first
// are sent with Batch set (token "batch") and the receiver buffers them
// until the row carrying the numeric token arrives.
type RData struct {
	Stream   string
	Instance string
	Token    int64
	Batch    bool
	Row      json.RawMessage
}

// Position announces a writer's position: every row up to New has been
// sent, and Prev is the position its previous announcement or row carried.
type Position struct {
	Stream   string
	Instance string
	Prev     int64
	New      int64
}

// Replicate asks every writer to announce its positions.
type Replicate struct{}

// UserSync tells the presence writer a user started or stopped syncing on
// a process. InstanceID is a random per-process id, not the instance name.
type UserSync struct {
	InstanceID string
	UserID     string
	DeviceID   string // "" is sent as None
	Active     bool
	LastSyncMS int64
}

// ClearUserSync drops every syncing user of a process (it is shutting down).
type ClearUserSync struct{ InstanceID string }

// FederationAck acknowledges the federation stream up to Token.
type FederationAck struct {
	Instance string
	Token    int64
}

// UserIP reports a client's IP for an access token.
type UserIP struct {
	UserID      string
	AccessToken string
	IP          string
	UserAgent   string
	DeviceID    string // "" is sent as null
	LastSeen    int64
}

// RemoteServerUp says a remote server came back (reset retry timers).
type RemoteServerUp struct{ Server string }

// LockReleased wakes waiters of a database lock.
type LockReleased struct{ Instance, LockName, LockKey string }

// NewActiveTask tells the task runner to pick up a scheduled task.
type NewActiveTask struct{ TaskID string }

func (RData) Name() string          { return "RDATA" }
func (Position) Name() string       { return "POSITION" }
func (Replicate) Name() string      { return "REPLICATE" }
func (UserSync) Name() string       { return "USER_SYNC" }
func (ClearUserSync) Name() string  { return "CLEAR_USER_SYNC" }
func (FederationAck) Name() string  { return "FEDERATION_ACK" }
func (UserIP) Name() string         { return "USER_IP" }
func (RemoteServerUp) Name() string { return "REMOTE_SERVER_UP" }
func (LockReleased) Name() string   { return "LOCK_RELEASED" }
func (NewActiveTask) Name() string  { return "NEW_ACTIVE_TASK" }

// word checks a space-free argument.
func word(what, s string) error {
	if s == "" || strings.ContainsAny(s, " \n\r") {
		return fmt.Errorf("%s %q must be a non-empty word", what, s)
	}
	return nil
}

func compact(raw json.RawMessage) (string, error) {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return "", fmt.Errorf("row is not JSON: %w", err)
	}
	return b.String(), nil
}

func (c RData) args() (string, error) {
	if err := word("stream", c.Stream); err != nil {
		return "", err
	}
	if err := word("instance", c.Instance); err != nil {
		return "", err
	}
	row, err := compact(c.Row)
	if err != nil {
		return "", err
	}
	tok := strconv.FormatInt(c.Token, 10)
	if c.Batch {
		tok = "batch"
	}
	return c.Stream + " " + c.Instance + " " + tok + " " + row, nil
}

func (c Position) args() (string, error) {
	if err := word("stream", c.Stream); err != nil {
		return "", err
	}
	if err := word("instance", c.Instance); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %d %d", c.Stream, c.Instance, c.Prev, c.New), nil
}

func (Replicate) args() (string, error) { return "", nil }

func (c UserSync) args() (string, error) {
	for _, w := range [][2]string{{"instance id", c.InstanceID}, {"user id", c.UserID}} {
		if err := word(w[0], w[1]); err != nil {
			return "", err
		}
	}
	dev := c.DeviceID
	if dev == "" {
		dev = "None"
	} else if err := word("device id", dev); err != nil {
		return "", err
	}
	state := "end"
	if c.Active {
		state = "start"
	}
	return fmt.Sprintf("%s %s %s %s %d", c.InstanceID, c.UserID, dev, state, c.LastSyncMS), nil
}

func (c ClearUserSync) args() (string, error) {
	return c.InstanceID, word("instance id", c.InstanceID)
}

func (c FederationAck) args() (string, error) {
	if err := word("instance", c.Instance); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %d", c.Instance, c.Token), nil
}

func (c UserIP) args() (string, error) {
	if err := word("user id", c.UserID); err != nil {
		return "", err
	}
	var dev any
	if c.DeviceID != "" {
		dev = c.DeviceID
	}
	b, err := json.Marshal([]any{c.AccessToken, c.IP, c.UserAgent, dev, c.LastSeen})
	if err != nil {
		return "", err
	}
	return c.UserID + " " + string(b), nil
}

func (c RemoteServerUp) args() (string, error) { return c.Server, word("server", c.Server) }

func (c LockReleased) args() (string, error) {
	b, err := json.Marshal([]string{c.Instance, c.LockName, c.LockKey})
	return string(b), err
}

func (c NewActiveTask) args() (string, error) { return c.TaskID, word("task id", c.TaskID) }

// ErrUnknownCommand is returned for well-formed lines naming a command we
// do not know; receivers ignore those (a newer peer may send them).
var ErrUnknownCommand = errors.New("unknown command")

// Parse reads one wire line. Blank lines are an error the caller ignores.
func Parse(line string) (Command, error) {
	if strings.ContainsAny(line, "\n\r") {
		return nil, errors.New("parse command: newline in command")
	}
	name, rest, _ := strings.Cut(line, " ")
	switch name {
	case "RDATA":
		p := strings.SplitN(rest, " ", 4)
		if len(p) != 4 {
			return nil, errors.New("parse RDATA: want stream, instance, token and row")
		}
		c := RData{Stream: p[0], Instance: p[1]}
		if p[2] == "batch" {
			c.Batch = true
		} else {
			t, err := strconv.ParseInt(p[2], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("parse RDATA token %q: %w", p[2], err)
			}
			c.Token = t
		}
		if !json.Valid([]byte(p[3])) {
			return nil, errors.New("parse RDATA: row is not JSON")
		}
		c.Row = json.RawMessage(p[3])
		if err := word("stream", c.Stream); err != nil {
			return nil, fmt.Errorf("parse RDATA: %w", err)
		}
		return c, word("instance", c.Instance)
	case "POSITION":
		p := strings.Split(rest, " ")
		if len(p) != 4 {
			return nil, errors.New("parse POSITION: want stream, instance, prev and new")
		}
		prev, err1 := strconv.ParseInt(p[2], 10, 64)
		next, err2 := strconv.ParseInt(p[3], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, errors.New("parse POSITION: positions must be integers")
		}
		if p[0] == "" || p[1] == "" {
			return nil, errors.New("parse POSITION: empty stream or instance")
		}
		return Position{Stream: p[0], Instance: p[1], Prev: prev, New: next}, nil
	case "REPLICATE":
		return Replicate{}, nil
	case "USER_SYNC":
		p := strings.Split(rest, " ")
		if len(p) != 5 || p[0] == "" || p[1] == "" || p[2] == "" || (p[3] != "start" && p[3] != "end") {
			return nil, errors.New("parse USER_SYNC: want instance id, user id, device id, start|end, last sync ms")
		}
		ms, err := strconv.ParseInt(p[4], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parse USER_SYNC last sync: %w", err)
		}
		dev := p[2]
		if dev == "None" {
			dev = ""
		}
		return UserSync{InstanceID: p[0], UserID: p[1], DeviceID: dev, Active: p[3] == "start", LastSyncMS: ms}, nil
	case "CLEAR_USER_SYNC":
		if err := word("instance id", rest); err != nil {
			return nil, fmt.Errorf("parse CLEAR_USER_SYNC: %w", err)
		}
		return ClearUserSync{InstanceID: rest}, nil
	case "FEDERATION_ACK":
		p := strings.Split(rest, " ")
		if len(p) != 2 || p[0] == "" {
			return nil, errors.New("parse FEDERATION_ACK: want instance and token")
		}
		t, err := strconv.ParseInt(p[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("parse FEDERATION_ACK token: %w", err)
		}
		return FederationAck{Instance: p[0], Token: t}, nil
	case "USER_IP":
		user, js, ok := strings.Cut(rest, " ")
		if !ok || user == "" {
			return nil, errors.New("parse USER_IP: want user id and data")
		}
		var arr []json.RawMessage
		if err := json.Unmarshal([]byte(js), &arr); err != nil || len(arr) != 5 {
			return nil, errors.New("parse USER_IP: data must be a 5-element array")
		}
		c := UserIP{UserID: user}
		var dev *string
		if json.Unmarshal(arr[0], &c.AccessToken) != nil || json.Unmarshal(arr[1], &c.IP) != nil ||
			json.Unmarshal(arr[2], &c.UserAgent) != nil || json.Unmarshal(arr[3], &dev) != nil ||
			json.Unmarshal(arr[4], &c.LastSeen) != nil {
			return nil, errors.New("parse USER_IP: bad field types")
		}
		if dev != nil {
			c.DeviceID = *dev
		}
		return c, nil
	case "REMOTE_SERVER_UP":
		if err := word("server", rest); err != nil {
			return nil, fmt.Errorf("parse REMOTE_SERVER_UP: %w", err)
		}
		return RemoteServerUp{Server: rest}, nil
	case "LOCK_RELEASED":
		var arr []string
		if err := json.Unmarshal([]byte(rest), &arr); err != nil || len(arr) != 3 {
			return nil, errors.New("parse LOCK_RELEASED: want [instance, lock name, lock key]")
		}
		return LockReleased{Instance: arr[0], LockName: arr[1], LockKey: arr[2]}, nil
	case "NEW_ACTIVE_TASK":
		if err := word("task id", rest); err != nil {
			return nil, fmt.Errorf("parse NEW_ACTIVE_TASK: %w", err)
		}
		return NewActiveTask{TaskID: rest}, nil
	case "":
		return nil, errors.New("parse command: empty line")
	default:
		return nil, fmt.Errorf("parse command %q: %w", name, ErrUnknownCommand)
	}
}
