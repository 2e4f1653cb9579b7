package canonicaljson_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"ganglion/internal/canonicaljson"
)

type mode int

const (
	both mode = iota
	strictOnly
	lenientOnly
)

func TestCanonicalize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		mode mode
	}{
		// The examples of the spec's "Canonical JSON" appendix.
		{"spec empty", `{}`, `{}`, both},
		{"spec one two", "{\n    \"one\": 1,\n    \"two\": \"Two\"\n}", `{"one":1,"two":"Two"}`, both},
		{"spec reorder", "{\n    \"b\": \"2\",\n    \"a\": \"1\"\n}", `{"a":"1","b":"2"}`, both},
		{"spec reorder compact", `{"b":"2","a":"1"}`, `{"a":"1","b":"2"}`, both},
		{"spec nested", `{
		    "auth": {
		        "success": true,
		        "mxid": "@john.doe:example.com",
		        "profile": {
		            "display_name": "John Doe",
		            "three_pids": [
		                {"medium": "email", "address": "john.doe@example.org"},
		                {"medium": "msisdn", "address": "123456789"}
		            ]
		        }
		    }
		}`, `{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}`, both},
		{"spec utf8", `{"a": "日本語"}`, `{"a":"日本語"}`, both},
		{"spec utf8 keys", `{"本": 2, "日": 1}`, `{"日":1,"本":2}`, both},
		{"spec unicode escape", `{"a": "\u65E5"}`, `{"a":"日"}`, both},
		{"spec null", `{"a": null}`, `{"a":null}`, both},
		// The spec example {"a": -0, "b": 1e10} -> {"a":0,"b":10000000000}
		// is deliberately not followed: see the package comment.
		{"negative zero", `{"a": -0}`, `{"a":0}`, both},
		{"spec exponent lenient python repr", `{"a": -0, "b": 1e10}`, `{"a":0,"b":10000000000.0}`, lenientOnly},

		{"scalars", ` [true,false,null,"",0,-1,[],{}] `, `[true,false,null,"",0,-1,[],{}]`, both},
		{"top-level string", `"x"`, `"x"`, both},
		{"short escapes", `"\" \\ \/ \b \f \n \r \t"`, `"\" \\ / \b \f \n \r \t"`, both},
		{"control escapes lowercase", `"\u0000\u001F\u000B\u007f"`, "\"\\u0000\\u001f\\u000b\x7f\"", both},
		{"html escapes undone", `"\u003c\u003e\u0026\u2028"`, "\"<>&\u2028\"", both},
		{"surrogate pair", `"\ud83d\uDE00"`, `"😀"`, both},
		{"non-ascii literal", `"é€😀"`, `"é€😀"`, both},
		{"escaped key sorts by decoded value", `{"b":1,"\u0001":2,"a":3}`, `{"\u0001":2,"a":3,"b":1}`, both},
		{"code point order not utf16", `{"😀":1,"～":2}`, `{"～":2,"😀":1}`, both},
		{"key escape canonicalised", `{"\u0061":1}`, `{"a":1}`, both},
		{"nested unsorted", `{"z":{"y":[{"b":1,"a":2}],"x":0},"a":[]}`, `{"a":[],"z":{"x":0,"y":[{"a":2,"b":1}]}}`, both},
		{"max safe int", `[9007199254740991,-9007199254740991]`, `[9007199254740991,-9007199254740991]`, both},

		{"big ints kept exactly", `[12345678901234567890123,-9007199254740992]`, `[12345678901234567890123,-9007199254740992]`, lenientOnly},
		{"float integral", `[1.0,1E2,1e3]`, `[1.0,100.0,1000.0]`, lenientOnly},
		{"float repr boundaries", `[1e15,1e16,0.0001,0.00001,123.456e-2]`, `[1000000000000000.0,1e+16,0.0001,1e-05,1.23456]`, lenientOnly},
		{"float shortest digits", `[0.1,1.5e300,2.5E-7,-1.25]`, `[0.1,1.5e+300,2.5e-07,-1.25]`, lenientOnly},
		{"float zeros", `[0.0,-0.0,1e-400]`, `[0.0,-0.0,0.0]`, lenientOnly},
		{"duplicate keys last wins", `{"a":1,"b":2,"a":3}`, `{"a":3,"b":2}`, lenientOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, strict := range []bool{true, false} {
				if (strict && tt.mode == lenientOnly) || (!strict && tt.mode == strictOnly) {
					continue
				}
				got, err := canonicaljson.Canonicalize([]byte(tt.in), strict)
				if err != nil {
					t.Fatalf("strict=%v: %v", strict, err)
				}
				if string(got) != tt.want {
					t.Errorf("strict=%v:\n got %s\nwant %s", strict, got, tt.want)
				}
			}
		})
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
		kind error
		mode mode
	}{
		{"float strict", `{"a":1.0}`, canonicaljson.ErrNumber, strictOnly},
		{"exponent strict", `{"a":1e3}`, canonicaljson.ErrNumber, strictOnly},
		{"spec exponent strict", `{"a": -0, "b": 1e10}`, canonicaljson.ErrNumber, strictOnly},
		{"int too big", `9007199254740992`, canonicaljson.ErrNumber, strictOnly},
		{"int too small", `-9007199254740992`, canonicaljson.ErrNumber, strictOnly},
		{"int huge", `123456789012345678901234567890`, canonicaljson.ErrNumber, strictOnly},
		{"duplicate key strict", `{"a":1,"a":1}`, canonicaljson.ErrDuplicateKey, strictOnly},
		{"duplicate key via escape", `{"a":1,"\u0061":2}`, canonicaljson.ErrDuplicateKey, strictOnly},
		{"float overflow", `1e400`, canonicaljson.ErrNumber, lenientOnly},
		{"invalid utf8", "\"\xff\"", canonicaljson.ErrUTF8, both},
		{"utf8 encoded surrogate", "\"\xed\xa0\x80\"", canonicaljson.ErrUTF8, both},
		{"invalid utf8 in key", "{\"\xc3\":1}", canonicaljson.ErrUTF8, both},
		{"lone high surrogate", `"\ud83d"`, canonicaljson.ErrUTF8, both},
		{"lone low surrogate", `"\ude00"`, canonicaljson.ErrUTF8, both},
		{"high surrogate then non-low", `"\ud83d\u0041"`, canonicaljson.ErrUTF8, both},
		{"empty", ``, canonicaljson.ErrSyntax, both},
		{"whitespace only", `  `, canonicaljson.ErrSyntax, both},
		{"trailing data", `{} {}`, canonicaljson.ErrSyntax, both},
		{"trailing comma object", `{"a":1,}`, canonicaljson.ErrSyntax, both},
		{"trailing comma array", `[1,]`, canonicaljson.ErrSyntax, both},
		{"leading zero", `01`, canonicaljson.ErrSyntax, both},
		{"plus sign", `+1`, canonicaljson.ErrSyntax, both},
		{"bare minus", `-`, canonicaljson.ErrSyntax, both},
		{"dot without digits", `1.`, canonicaljson.ErrSyntax, both},
		{"exponent without digits", `1e+`, canonicaljson.ErrSyntax, both},
		{"NaN", `NaN`, canonicaljson.ErrSyntax, both},
		{"Infinity", `-Infinity`, canonicaljson.ErrSyntax, both},
		{"single quotes", `{'a':1}`, canonicaljson.ErrSyntax, both},
		{"unquoted key", `{a:1}`, canonicaljson.ErrSyntax, both},
		{"raw control char", "\"a\nb\"", canonicaljson.ErrSyntax, both},
		{"bad escape", `"\x41"`, canonicaljson.ErrSyntax, both},
		{"short unicode escape", `"\u12"`, canonicaljson.ErrSyntax, both},
		{"unterminated string", `"abc`, canonicaljson.ErrSyntax, both},
		{"unterminated object", `{"a":1`, canonicaljson.ErrSyntax, both},
		{"unterminated array", `[1`, canonicaljson.ErrSyntax, both},
		{"truncated literal", `tru`, canonicaljson.ErrSyntax, both},
		{"byte order mark", "\ufeff{}", canonicaljson.ErrSyntax, both},
		{"too deep", strings.Repeat("[", canonicaljson.MaxDepth+1) + strings.Repeat("]", canonicaljson.MaxDepth+1), canonicaljson.ErrTooDeep, both},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, strict := range []bool{true, false} {
				if (strict && tt.mode == lenientOnly) || (!strict && tt.mode == strictOnly) {
					continue
				}
				got, err := canonicaljson.Canonicalize([]byte(tt.in), strict)
				if err == nil {
					t.Fatalf("strict=%v: accepted, got %s", strict, got)
				}
				if !errors.Is(err, tt.kind) {
					t.Errorf("strict=%v: error %v is not %v", strict, err, tt.kind)
				}
				var cerr *canonicaljson.Error
				if !errors.As(err, &cerr) {
					t.Errorf("strict=%v: error %T is not *canonicaljson.Error", strict, err)
				}
			}
		})
	}
}

func TestMaxDepthAccepted(t *testing.T) {
	in := strings.Repeat(`{"a":[`, canonicaljson.MaxDepth/2) + strings.Repeat(`]}`, canonicaljson.MaxDepth/2)
	if _, err := canonicaljson.Canonicalize([]byte(in), true); err != nil {
		t.Fatalf("depth %d rejected: %v", canonicaljson.MaxDepth, err)
	}
}

func TestMarshal(t *testing.T) {
	type inner struct {
		Z string `json:"z"`
		A int64  `json:"a"`
	}
	tests := []struct {
		name    string
		in      any
		want    string
		wantErr error
	}{
		{"struct html chars", struct {
			B string `json:"b"`
			A inner  `json:"a"`
		}{B: "<a href='x'>&</a>", A: inner{Z: "\u2028", A: -5}}, "{\"a\":{\"a\":-5,\"z\":\"\u2028\"},\"b\":\"<a href='x'>&</a>\"}", nil},
		{"map", map[string]any{"b": []int{1, 2}, "a": nil}, `{"a":null,"b":[1,2]}`, nil},
		{"raw message", json.RawMessage(`{ "y" : 1 , "x" : 2 }`), `{"x":2,"y":1}`, nil},
		{"float rejected", map[string]float64{"a": 1.5}, "", canonicaljson.ErrNumber},
		{"int64 out of range", map[string]int64{"a": 1 << 60}, "", canonicaljson.ErrNumber},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := canonicaljson.Marshal(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %s, %v; want error %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	if _, err := canonicaljson.Marshal(make(chan int)); err == nil {
		t.Error("Marshal(chan) succeeded")
	}
}

func TestAppendReusesBuffer(t *testing.T) {
	buf := []byte("prefix:")
	got, err := canonicaljson.Append(buf, []byte(`{"b":1, "a":2}`), true)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `prefix:{"a":2,"b":1}` {
		t.Errorf("got %s", got)
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"b":"2","a":"1"}`, `{"a":[1,-0,1e10,1.5,"\u00e9\ud83d\ude00"]}`,
		`{"a":{"c":null,"b":true},"a":false}`, `"\u0000\u001f\"\\\/"`,
		`[9007199254740992,123456789012345678901234567890]`, `{"日":1,"本":2,"\u0001":3}`,
		"[\"\xff\"]", `[1e400,1e-400,-0.0]`, `{"a" : [ 1 , 2 ] , "b" : { } }`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		strictOut, strictErr := canonicaljson.Canonicalize(in, true)
		lenientOut, lenientErr := canonicaljson.Canonicalize(in, false)
		if strictErr == nil {
			// Whatever strict mode accepts is valid JSON with the same meaning.
			if !json.Valid(in) {
				t.Fatalf("accepted invalid JSON %q", in)
			}
			var a, b any
			if err := json.Unmarshal(in, &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(strictOut, &b); err != nil {
				t.Fatalf("output %q is not JSON: %v", strictOut, err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Fatalf("meaning changed: %q -> %q", in, strictOut)
			}
			// Lenient mode agrees wherever strict mode accepts.
			if lenientErr != nil || !bytes.Equal(strictOut, lenientOut) {
				t.Fatalf("modes disagree on %q: %q (%v) vs %q", in, lenientOut, lenientErr, strictOut)
			}
			again, err := canonicaljson.Canonicalize(strictOut, true)
			if err != nil || !bytes.Equal(again, strictOut) {
				t.Fatalf("strict not idempotent: %q -> %q (%v)", strictOut, again, err)
			}
		}
		if lenientErr == nil {
			if !json.Valid(lenientOut) {
				t.Fatalf("lenient output %q is not JSON", lenientOut)
			}
			again, err := canonicaljson.Canonicalize(lenientOut, false)
			if err != nil || !bytes.Equal(again, lenientOut) {
				t.Fatalf("lenient not idempotent: %q -> %q (%v)", lenientOut, again, err)
			}
		}
	})
}

// benchEvent is shaped like a federation PDU: mostly strings, a nested
// content object, keys out of order and some whitespace.
var benchEvent = []byte(`{
  "type": "m.room.message",
  "room_id": "!jEsUZKDJdhlrceRyVU:example.org",
  "sender": "@example:example.org",
  "origin_server_ts": 1432735824653,
  "depth": 12345,
  "content": {
    "msgtype": "m.text",
    "body": "This is an example text message with some \"quotes\" and unicode: é€😀",
    "format": "org.matrix.custom.html",
    "formatted_body": "<b>This is an example text message</b> \u003cwith\u003e escapes",
    "m.relates_to": {"rel_type": "m.thread", "event_id": "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg", "is_falling_back": true}
  },
  "prev_events": ["$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg", "$Xm7Bk4lRFsRaGAhEDAK0Ab5sO2r3IG9ZcbQLrEDXvzs"],
  "auth_events": ["$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "$bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "$ccccccccccccccccccccccccccccccccccccccccccc"],
  "hashes": {"sha256": "ThisHashCoversAllFieldsInCaseThisIsRedacted"},
  "signatures": {"example.org": {"ed25519:key_version": "86BytesOfSignatureOfTheRedactedEventxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}},
  "unsigned": {"age": 1234, "transaction_id": "m1234.5"}
}`)

func BenchmarkCanonicalize(b *testing.B) {
	canonical, err := canonicaljson.Canonicalize(benchEvent, true)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		in   []byte
	}{{"pretty-unsorted", benchEvent}, {"already-canonical", canonical}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.in)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := canonicaljson.Canonicalize(bc.in, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
