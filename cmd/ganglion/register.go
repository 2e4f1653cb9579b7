package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/events"
)

// register creates a user with the shared-secret admin API, as Synapse's
// register_new_matrix_user does, so it works against a running server.
func register(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("register", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "config file (for registration_shared_secret and the listener)")
	user := fs.String("user", "", "localpart of the new user")
	password := fs.String("password", "", "password of the new user")
	admin := fs.Bool("admin", false, "make the user a server admin")
	baseURL := fs.String("url", "", "server base URL (default: from the config's first client listener)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 || *user == "" || *password == "" {
		return errors.New("register: -c, --user and --password are required")
	}
	cfg, err := config.Load(files, os.Getenv)
	if err != nil {
		return err
	}
	secret := cfg.RegistrationSecret()
	if secret == "" {
		return errors.New("register: registration_shared_secret is not set in the config")
	}
	if *baseURL == "" {
		*baseURL = clientURL(cfg)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	req, _ := http.NewRequestWithContext(ctx, "GET", *baseURL+"/_synapse/admin/v1/register", nil)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("register: is the server running at %s? %w", *baseURL, err)
	}
	var nonce struct {
		Nonce string `json:"nonce"`
	}
	err = json.NewDecoder(resp.Body).Decode(&nonce)
	resp.Body.Close()
	if err != nil || nonce.Nonce == "" {
		return fmt.Errorf("register: could not get a nonce (status %d)", resp.StatusCode)
	}
	mac := hmac.New(sha1.New, []byte(secret))
	role := "notadmin"
	if *admin {
		role = "admin"
	}
	mac.Write([]byte(nonce.Nonce + "\x00" + *user + "\x00" + *password + "\x00" + role))
	body, _ := json.Marshal(map[string]any{"nonce": nonce.Nonce, "username": *user, "password": *password,
		"admin": *admin, "mac": hex.EncodeToString(mac.Sum(nil))})
	req, _ = http.NewRequestWithContext(ctx, "POST", *baseURL+"/_synapse/admin/v1/register", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err = client.Do(req)
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	defer resp.Body.Close()
	var res map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&res)
	if resp.StatusCode != 200 {
		return fmt.Errorf("register: server answered %d: %v %v", resp.StatusCode, res["errcode"], res["error"])
	}
	fmt.Fprintf(out, "Registered %v\n", res["user_id"])
	return nil
}

func clientURL(cfg *config.Config) string {
	for _, l := range cfg.Listeners() {
		if !l.HasResource("client") {
			continue
		}
		host := "127.0.0.1"
		for _, a := range l.BindAddresses {
			if a != "0.0.0.0" && a != "::" {
				host = a
				break
			}
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return fmt.Sprintf("http://%s:%d", host, l.Port)
	}
	return "http://127.0.0.1:8008"
}

// loadOrCreateKey makes sure a signing key exists at path.
func loadOrCreateKey(path string) (events.SigningKey, error) {
	if data, err := os.ReadFile(path); err == nil {
		return events.ParseSigningKeyFile(data)
	}
	k, err := events.GenerateSigningKey()
	if err != nil {
		return k, err
	}
	if err := os.WriteFile(path, events.FormatSigningKeyFile(k), 0o600); err != nil {
		return k, fmt.Errorf("write signing key: %w", err)
	}
	return k, nil
}
