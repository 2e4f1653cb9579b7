package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// keyDevice is one logged-in device with its ed25519 identity key, able
// to upload keys the server accepts (signed by that key).
type keyDevice struct {
	u    *user
	priv ed25519.PrivateKey
}

func unpadded(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }

// sign adds the device's signature to obj: over the canonical JSON of obj
// (encoding/json sorts map keys and writes no spaces; the values here are
// plain ASCII, so that is canonical).
func (d *keyDevice) sign(obj map[string]any) (map[string]any, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode object to sign: %w", err)
	}
	obj["signatures"] = map[string]any{d.u.id: map[string]string{"ed25519:" + d.u.deviceID: unpadded(ed25519.Sign(d.priv, b))}}
	return obj, nil
}

// uploadKeys uploads the device's keys and otks signed one-time keys.
func (s *scenarioRun) uploadKeys(ctx context.Context, d *keyDevice, otks int) error {
	curve := make([]byte, 32)
	_, _ = rand.Read(curve)
	pub := d.priv.Public().(ed25519.PublicKey)
	dk, err := d.sign(map[string]any{
		"user_id": d.u.id, "device_id": d.u.deviceID,
		"algorithms": []string{"m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"},
		"keys":       map[string]string{"curve25519:" + d.u.deviceID: unpadded(curve), "ed25519:" + d.u.deviceID: unpadded(pub)},
	})
	if err != nil {
		return err
	}
	one := map[string]any{}
	for i := range otks {
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		signed, err := d.sign(map[string]any{"key": unpadded(k)})
		if err != nil {
			return err
		}
		one[fmt.Sprintf("signed_curve25519:K%06d", i)] = signed
	}
	body := map[string]any{"device_keys": dk, "one_time_keys": one}
	_, err = s.c.do(ctx, 0, "POST", d.u.base, clientPath("keys", "upload"), d.u.token, body, nil)
	return err
}

// keyDevices registers users with devices each (one registration and
// devices-1 password logins) and uploads every device's keys with otks
// one-time keys.
func (s *scenarioRun) keyDevices(ctx context.Context, users, devices, otks int) ([][]*keyDevice, error) {
	owners, err := s.users(ctx, users)
	if err != nil {
		return nil, err
	}
	out := make([][]*keyDevice, users)
	s.prog.phase("setup: devices and keys", users*devices)
	err = forEach(ctx, users, s.o.concurrency, func(ctx context.Context, i int) error {
		for j := range devices {
			u := owners[i]
			if j > 0 {
				var err error
				if u, err = s.login(ctx, owners[i].base, owners[i].localpart); err != nil {
					return err
				}
			}
			_, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			d := &keyDevice{u: u, priv: priv}
			if err := s.uploadKeys(ctx, d, otks); err != nil {
				return err
			}
			out[i] = append(out[i], d)
			s.prog.add(1)
		}
		return nil
	})
	return out, err
}

// keysQuery: one /keys/query naming every user, repeated.
func (s *scenarioRun) keysQuery(ctx context.Context) error {
	nu, nd, reps := s.o.keysUsers, s.o.keysDevices, s.o.keysRepeat
	s.res.Params = map[string]any{"users": nu, "devices_per_user": nd, "repeats": reps}
	devs, err := s.keyDevices(ctx, nu, nd, 0)
	if err != nil {
		return err
	}
	want := map[string][]string{}
	for _, ds := range devs {
		want[ds[0].u.id] = []string{}
	}
	asker := devs[0][0].u
	var lat []time.Duration
	d := s.measure(ctx, "keys/query", reps, func(ctx context.Context) {
		for range reps {
			if ctx.Err() != nil {
				return
			}
			var ans struct {
				DeviceKeys map[string]map[string]json.RawMessage `json:"device_keys"`
			}
			t0 := time.Now()
			_, err := s.c.do(ctx, 0, "POST", asker.base, clientPath("keys", "query"), asker.token,
				map[string]any{"device_keys": want}, &ans)
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			lat = append(lat, el)
			n := 0
			for _, ds := range ans.DeviceKeys {
				n += len(ds)
			}
			if n != nu*nd {
				s.errs.add(fmt.Errorf("keys/query answered %d devices, want %d", n, nu*nd))
			}
			s.prog.add(1)
		}
	})
	s.setResult(len(lat), d, "queries/s", lat)
	return ctx.Err()
}

// keysClaim: one /keys/claim naming keys-users devices (users of
// keys-devices devices each), repeated; every device holds a one-time key
// for every repeat, so each claim hands out real one-time keys.
func (s *scenarioRun) keysClaim(ctx context.Context) error {
	nd, reps := s.o.keysDevices, s.o.keysRepeat
	nu := max(1, s.o.keysUsers/nd)
	s.res.Params = map[string]any{"devices": nu * nd, "repeats": reps}
	devs, err := s.keyDevices(ctx, nu, nd, reps)
	if err != nil {
		return err
	}
	want := map[string]map[string]string{}
	for _, ds := range devs {
		m := map[string]string{}
		for _, d := range ds {
			m[d.u.deviceID] = "signed_curve25519"
		}
		want[ds[0].u.id] = m
	}
	asker := devs[0][0].u
	var lat []time.Duration
	d := s.measure(ctx, "keys/claim", reps, func(ctx context.Context) {
		for range reps {
			if ctx.Err() != nil {
				return
			}
			var ans struct {
				OneTimeKeys map[string]map[string]map[string]json.RawMessage `json:"one_time_keys"`
			}
			t0 := time.Now()
			_, err := s.c.do(ctx, 0, "POST", asker.base, clientPath("keys", "claim"), asker.token,
				map[string]any{"one_time_keys": want}, &ans)
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			lat = append(lat, el)
			n := 0
			for _, ds := range ans.OneTimeKeys {
				n += len(ds)
			}
			if n != nu*nd {
				s.errs.add(fmt.Errorf("keys/claim answered keys of %d devices, want %d", n, nu*nd))
			}
			s.prog.add(1)
		}
	})
	s.setResult(len(lat), d, "claims/s", lat)
	return ctx.Err()
}

// media: uploads of a -media-mib file and their downloads (authenticated
// media), through whatever URL is given (a router on a fleet). Reports
// MiB/s each way and, with -pid, how far the peak RSS rose above the RSS
// before the measured phase.
func (s *scenarioRun) media(ctx context.Context) error {
	size, reps := s.o.mediaMiB<<20, s.o.mediaRepeats
	s.res.Params = map[string]any{"mib": s.o.mediaMiB, "repeats": reps}
	users, err := s.users(ctx, 1)
	if err != nil {
		return err
	}
	u := users[0]
	payload := make([]byte, size)
	_, _ = rand.Read(payload)

	var baseRSS float64
	if len(s.o.pids) > 0 {
		s.res.Extra["rss_growth_scope"] = s.resetPeakRSS()
		if baseRSS, err = rssMiB(s.o.pids); err != nil {
			return err
		}
	}
	var upTime, downTime time.Duration
	var upLat, downLat []time.Duration
	ups, downs := 0, 0
	d := s.measure(ctx, "media upload and download", reps, func(ctx context.Context) {
		for i := range reps {
			if ctx.Err() != nil {
				return
			}
			t0 := time.Now()
			uri, err := s.uploadMedia(ctx, u, payload, fmt.Sprintf("bench-%d.bin", i))
			el := time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			upTime += el
			upLat = append(upLat, el)
			ups++
			t0 = time.Now()
			err = s.downloadMedia(ctx, u, uri, payload)
			el = time.Since(t0)
			if err != nil {
				s.errs.add(err)
				continue
			}
			downTime += el
			downLat = append(downLat, el)
			downs++
			s.prog.add(1)
		}
	})
	s.setResult(ups+downs, d, "transfers/s", append(append([]time.Duration(nil), upLat...), downLat...))
	mib := float64(size) / (1 << 20)
	if upTime > 0 {
		s.res.Extra["upload_mib_per_s"] = round2(mib * float64(ups) / upTime.Seconds())
		s.res.Extra["upload_latency_ms"] = percentiles(upLat)
	}
	if downTime > 0 {
		s.res.Extra["download_mib_per_s"] = round2(mib * float64(downs) / downTime.Seconds())
		s.res.Extra["download_latency_ms"] = percentiles(downLat)
	}
	if len(s.o.pids) > 0 {
		peak, err := peakRSSMiB(s.o.pids)
		if err != nil {
			return err
		}
		s.res.Extra["rss_growth_mib"] = round2(peak - baseRSS)
	}
	return ctx.Err()
}

// uploadMedia POSTs data to /_matrix/media/v3/upload and returns its mxc URI.
func (s *scenarioRun) uploadMedia(ctx context.Context, u *user, data []byte, filename string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, s.c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "POST", u.base+"/_matrix/media/v3/upload?filename="+url.QueryEscape(filename),
		bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("build upload: %w", err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+u.token)
	resp, err := s.c.hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("POST media upload: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if err != nil {
		return "", fmt.Errorf("POST media upload: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("POST media upload: HTTP %d: %s", resp.StatusCode, truncate(body, 200))
	}
	var ans struct {
		ContentURI string `json:"content_uri"`
	}
	if err := json.Unmarshal(body, &ans); err != nil || !strings.HasPrefix(ans.ContentURI, "mxc://") {
		return "", fmt.Errorf("POST media upload: answer %s", truncate(body, 200))
	}
	return ans.ContentURI, nil
}

// downloadMedia GETs an mxc URI by authenticated media and checks the
// bytes against want while streaming them (the bench holds no second copy).
func (s *scenarioRun) downloadMedia(ctx context.Context, u *user, uri string, want []byte) error {
	ctx, cancel := context.WithTimeout(ctx, s.c.timeout)
	defer cancel()
	serverAndID := strings.TrimPrefix(uri, "mxc://")
	req, err := http.NewRequestWithContext(ctx, "GET", u.base+"/_matrix/client/v1/media/download/"+serverAndID, nil)
	if err != nil {
		return fmt.Errorf("build download: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+u.token)
	resp, err := s.c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("GET media download: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("GET media download: HTTP %d: %s", resp.StatusCode, truncate(body, 200))
	}
	cmp := &compareWriter{want: want}
	if _, err := io.Copy(cmp, resp.Body); err != nil {
		return fmt.Errorf("GET media download: %w", err)
	}
	if cmp.n != len(want) {
		return fmt.Errorf("GET media download: %d bytes, want %d", cmp.n, len(want))
	}
	return nil
}

// compareWriter checks written bytes against want as they arrive.
type compareWriter struct {
	want []byte
	n    int
}

func (c *compareWriter) Write(p []byte) (int, error) {
	if c.n+len(p) > len(c.want) || !bytes.Equal(p, c.want[c.n:c.n+len(p)]) {
		return 0, fmt.Errorf("downloaded bytes differ from the upload at offset %d", c.n)
	}
	c.n += len(p)
	return len(p), nil
}
