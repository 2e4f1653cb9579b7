package xmatrix_test

import (
	"errors"
	"testing"

	"ganglion/internal/federation/xmatrix"
)

func TestParseHeader(t *testing.T) {
	full := xmatrix.Params{Origin: "origin.example:8448", Destination: "dest.example", Key: "ed25519:a_1", Sig: "c2ln/+x"}
	for _, tc := range []struct {
		name, header string
		want         xmatrix.Params
		wantErr      bool
	}{
		{name: "quoted", header: `X-Matrix origin="origin.example:8448",destination="dest.example",key="ed25519:a_1",sig="c2ln/+x"`, want: full},
		{name: "unquoted with colons (older servers)", header: `X-Matrix origin=origin.example:8448,destination=dest.example,key=ed25519:a_1,sig=c2ln/+x`, want: full},
		{name: "scheme and names case-insensitive, any order", header: `x-matrix SIG="c2ln/+x",Key="ed25519:a_1",Destination=dest.example,ORIGIN="origin.example:8448"`, want: full},
		{name: "spaces and tabs around commas and =", header: "X-Matrix   origin = \"origin.example:8448\" ,\tdestination=\"dest.example\" , key=\"ed25519:a_1\",sig=\"c2ln/+x\"  ", want: full},
		{name: "empty list elements", header: `X-Matrix ,origin="origin.example:8448",,destination="dest.example",key="ed25519:a_1",sig="c2ln/+x",`, want: full},
		{name: "comma inside quotes", header: `X-Matrix origin="a,b",key="ed25519:k",sig="s"`, want: xmatrix.Params{Origin: "a,b", Key: "ed25519:k", Sig: "s"}},
		{name: "backslash escapes", header: `X-Matrix origin="a\"b\\c\d",key="ed25519:k",sig="s"`, want: xmatrix.Params{Origin: `a"b\cd`, Key: "ed25519:k", Sig: "s"}},
		{name: "no destination (older servers)", header: `X-Matrix origin=o.example,key="ed25519:k",sig="s"`, want: xmatrix.Params{Origin: "o.example", Key: "ed25519:k", Sig: "s"}},
		{name: "unknown parameters ignored", header: `X-Matrix origin=o.example,foo="x,y",key="ed25519:k",bar=1,sig="s"`, want: xmatrix.Params{Origin: "o.example", Key: "ed25519:k", Sig: "s"}},
		{name: "IPv6 origin unquoted", header: `X-Matrix origin=[::1]:8448,key="ed25519:k",sig="s"`, want: xmatrix.Params{Origin: "[::1]:8448", Key: "ed25519:k", Sig: "s"}},

		{name: "missing origin", header: `X-Matrix key="ed25519:k",sig="s"`, wantErr: true},
		{name: "missing key", header: `X-Matrix origin=o,sig="s"`, wantErr: true},
		{name: "missing sig", header: `X-Matrix origin=o,key="ed25519:k"`, wantErr: true},
		{name: "empty destination", header: `X-Matrix origin=o,destination="",key="ed25519:k",sig="s"`, wantErr: true},
		{name: "duplicate origin", header: `X-Matrix origin=o,origin=p,key="ed25519:k",sig="s"`, wantErr: true},
		{name: "unterminated quote", header: `X-Matrix origin="o,key="ed25519:k",sig="s`, wantErr: true},
		{name: "no value", header: `X-Matrix origin,key="ed25519:k",sig="s"`, wantErr: true},
		{name: "junk after value", header: `X-Matrix origin="o"x,key="ed25519:k",sig="s"`, wantErr: true},
		{name: "quote inside unquoted value", header: `X-Matrix origin=o"x,key="ed25519:k",sig="s"`, wantErr: true},
		{name: "control character", header: "X-Matrix origin=\"o\x01\",key=\"ed25519:k\",sig=\"s\"", wantErr: true},
		{name: "scheme only", header: `X-Matrix`, wantErr: true},
		{name: "scheme and spaces only", header: `X-Matrix   `, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := xmatrix.ParseHeader(tc.header)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseHeaderOtherScheme(t *testing.T) {
	for _, h := range []string{"Bearer abc", "X-Matrixfoo origin=o,key=k,sig=s", "", "X-Matri"} {
		if _, err := xmatrix.ParseHeader(h); !errors.Is(err, xmatrix.ErrNotXMatrix) {
			t.Errorf("%q: got %v, want ErrNotXMatrix", h, err)
		}
	}
}

func TestFormatHeaderRoundTrip(t *testing.T) {
	for _, p := range []xmatrix.Params{
		{Origin: "a.example", Destination: "[::1]:8448", Key: "ed25519:a_b", Sig: "AAAA/+"},
		{Origin: "1.2.3.4:80", Key: "ed25519:x", Sig: "s"},
	} {
		h := p.Format()
		got, err := xmatrix.ParseHeader(h)
		if err != nil || got != p {
			t.Fatalf("%s: parsed %+v, %v; want %+v", h, got, err, p)
		}
	}
	want := `X-Matrix origin="o.example",destination="d.example",key="ed25519:k",sig="s"`
	if got := (xmatrix.Params{Origin: "o.example", Destination: "d.example", Key: "ed25519:k", Sig: "s"}).Format(); got != want {
		t.Fatalf("Format = %s, want %s", got, want)
	}
}

// FuzzXMatrixHeader: the header comes from any client on the internet.
// Parsing never panics, and whatever parses survives Format and a second
// parse unchanged.
func FuzzXMatrixHeader(f *testing.F) {
	for _, s := range []string{
		`X-Matrix origin="origin.example:8448",destination="dest.example",key="ed25519:a_1",sig="c2ln/+x"`,
		`X-Matrix origin=o:1,key=ed25519:k,sig=s`,
		`x-matrix ,, ORIGIN = "a\"b" , key="k",sig="s",x=y`,
		`X-Matrix origin="`,
		`Bearer x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		p, err := xmatrix.ParseHeader(h)
		if err != nil {
			return
		}
		if p.Origin == "" || p.Key == "" || p.Sig == "" {
			t.Fatalf("parsed %q with a required parameter empty: %+v", h, p)
		}
		again, err := xmatrix.ParseHeader(p.Format())
		if err != nil {
			t.Fatalf("Format of %+v (%q) does not parse: %v", p, p.Format(), err)
		}
		if again != p {
			t.Fatalf("round trip of %q: %+v became %+v", h, p, again)
		}
	})
}
