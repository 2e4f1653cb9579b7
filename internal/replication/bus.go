package replication

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisOptions locate the Redis server and say how to authenticate.
type RedisOptions struct {
	Host     string
	Port     int
	Path     string // unix socket; overrides Host/Port
	DB       int
	Password string // AUTH; Redis carries room ids and memberships
	// TLS, when set, wraps every connection (redis.use_tls); see RedisTLS.
	TLS *tls.Config
}

// RedisTLS builds the TLS settings of redis.use_tls: the server's
// certificate is verified against the system roots, or against caFile
// and/or every PEM file in caPath when given; certFile and keyFile (both
// or neither) are the client certificate for servers that require one
// (tls-auth-clients). host is the name the certificate must carry.
func RedisTLS(host, certFile, keyFile, caFile, caPath string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load redis client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if caFile == "" && caPath == "" {
		return cfg, nil
	}
	pool := x509.NewCertPool()
	var files []string
	if caFile != "" {
		files = append(files, caFile)
	}
	if caPath != "" {
		entries, err := os.ReadDir(caPath)
		if err != nil {
			return nil, fmt.Errorf("read redis ca_path: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				files = append(files, filepath.Join(caPath, e.Name()))
			}
		}
	}
	added := 0
	for _, f := range files {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read redis CA certificate: %w", err)
		}
		if pool.AppendCertsFromPEM(pem) {
			added++
		} else if f == caFile {
			return nil, fmt.Errorf("redis ca_file %s holds no PEM certificate", f)
		}
	}
	if added == 0 {
		return nil, errors.New("redis ca_file/ca_path hold no PEM certificate")
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// Bus is a process's link to the Redis pub/sub channel of its server: one
// connection subscribes, another publishes (a subscribed connection cannot
// publish). Redis is a lossy doorbell: anything missed while disconnected
// is caught up from the database (or the writer) after the reconnect
// handshake, never assumed delivered.
type Bus struct {
	channel string
	log     *slog.Logger
	opts    *redis.Options
	pub     *redis.Client

	// handler receives every command from other processes, in order, on the
	// receive goroutine. onConnect runs after each (re)subscription and
	// returns the handshake commands to publish.
	handler   func(ctx context.Context, c Command)
	onConnect func(ctx context.Context) []Command

	connected  atomic.Bool
	reconnects atomic.Int64
	published  atomic.Int64
	received   atomic.Int64
	mu         sync.Mutex
	lastErr    error
	counts     map[string]*atomic.Int64 // per command name, received
}

// Channel is the pub/sub channel of a fleet: its server name, behind
// redis.channel_prefix when two fleets share one Redis (the prefix keeps
// them from hearing each other; pub/sub ignores the database number).
func Channel(prefix, serverName string) string { return prefix + serverName }

// NewBus prepares a bus on channel (see Channel). Call Run to connect.
func NewBus(channel string, o RedisOptions, log *slog.Logger) *Bus {
	opts := &redis.Options{
		Network:      "tcp",
		Addr:         net.JoinHostPort(o.Host, strconv.Itoa(o.Port)),
		DB:           o.DB,
		Password:     o.Password,
		TLSConfig:    o.TLS,
		DialTimeout:  2 * time.Second,
		ReadTimeout:  5 * time.Second,
		WriteTimeout: 5 * time.Second,
		// Our own loop reconnects with backoff and redoes the handshake;
		// hidden client-side retries would only delay noticing an outage.
		MaxRetries: 0,
	}
	if o.Path != "" {
		opts.Network, opts.Addr = "unix", o.Path
	}
	return &Bus{channel: channel, log: log, opts: opts, pub: redis.NewClient(opts), counts: map[string]*atomic.Int64{}}
}

// ChannelName is the pub/sub channel the bus uses.
func (b *Bus) ChannelName() string { return b.channel }

// UsesTLS reports whether connections are wrapped in TLS (redis.use_tls).
func (b *Bus) UsesTLS() bool { return b.opts.TLSConfig != nil }

// OnCommand sets the handler of incoming commands.
func (b *Bus) OnCommand(h func(ctx context.Context, c Command)) { b.handler = h }

// OnConnect sets the handshake producer.
func (b *Bus) OnConnect(f func(ctx context.Context) []Command) { b.onConnect = f }

// Connected reports whether the subscription is live.
func (b *Bus) Connected() bool { return b.connected.Load() }

// Status is the bus's health, for status reports and metrics.
type Status struct {
	Connected  bool             `json:"connected"`
	Reconnects int64            `json:"reconnects"`
	Published  int64            `json:"published"`
	Received   int64            `json:"received"`
	LastError  string           `json:"last_error,omitempty"`
	ByCommand  map[string]int64 `json:"received_by_command"`
}

// Status snapshots the bus's health.
func (b *Bus) Status() Status {
	st := Status{Connected: b.connected.Load(), Reconnects: b.reconnects.Load(), Published: b.published.Load(),
		Received: b.received.Load(), ByCommand: map[string]int64{}}
	b.mu.Lock()
	if b.lastErr != nil {
		st.LastError = b.lastErr.Error()
	}
	for k, v := range b.counts {
		st.ByCommand[k] = v.Load()
	}
	b.mu.Unlock()
	return st
}

func (b *Bus) setErr(err error) {
	b.mu.Lock()
	b.lastErr = err
	b.mu.Unlock()
}

func (b *Bus) count(name string) {
	b.mu.Lock()
	c := b.counts[name]
	if c == nil {
		c = &atomic.Int64{}
		b.counts[name] = c
	}
	b.mu.Unlock()
	c.Add(1)
}

// Publish sends one command to every process (including, by echo, this
// one; receivers drop their own echoes). A failed publish is not retried:
// the next POSITION or the reconnect handshake repairs the gap.
func (b *Bus) Publish(ctx context.Context, c Command) error {
	line, err := Encode(c)
	if err != nil {
		return err
	}
	if err := b.pub.Publish(ctx, b.channel, line).Err(); err != nil {
		return fmt.Errorf("publish %s: %w", c.Name(), err)
	}
	b.published.Add(1)
	return nil
}

// Run keeps the subscription alive until ctx ends: subscribe, wait for the
// acknowledgement, publish the handshake, then read commands. Any error
// drops the connection and reconnects with backoff (capped at 5 s, as
// Synapse does), redoing the handshake.
func (b *Bus) Run(ctx context.Context) error {
	defer b.pub.Close()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := b.session(ctx)
		b.connected.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		b.setErr(err)
		b.log.Warn("redis replication link down; reconnecting", "err", err, "backoff", backoff)
		jitter := time.Duration(rand.Int64N(int64(backoff) / 2))
		t := time.NewTimer(backoff + jitter)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(backoff*2, 5*time.Second)
		b.reconnects.Add(1)
	}
	return nil
}

// session is one subscribed connection's life.
func (b *Bus) session(ctx context.Context) error {
	client := redis.NewClient(b.opts)
	defer client.Close()
	ps := client.Subscribe(ctx, b.channel)
	defer ps.Close()
	// Wait for the subscription to be acknowledged before announcing
	// anything: a REPLICATE sent earlier could be answered before we
	// listen, and those answers would be lost (Synapse #7427).
	for {
		msg, err := ps.ReceiveTimeout(ctx, 5*time.Second)
		if err != nil {
			return fmt.Errorf("subscribe to %s: %w", b.channel, err)
		}
		if s, ok := msg.(*redis.Subscription); ok && s.Kind == "subscribe" {
			break
		}
	}
	b.connected.Store(true)
	b.setErr(nil)
	b.log.Info("redis replication link up", "channel", b.channel)
	if b.onConnect != nil {
		for _, c := range b.onConnect(ctx) {
			if err := b.Publish(ctx, c); err != nil {
				return err
			}
		}
	}
	lastPing := time.Now()
	// Closing the subscription is what interrupts a blocked receive when
	// the process stops.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	for {
		msg, err := ps.ReceiveTimeout(ctx, 10*time.Second)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet channel: make sure the connection is still alive.
				if err := ps.Ping(ctx); err != nil {
					return fmt.Errorf("ping: %w", err)
				}
				lastPing = time.Now()
				continue
			}
			return err
		}
		switch m := msg.(type) {
		case *redis.Message:
			b.received.Add(1)
			c, err := Parse(m.Payload)
			if err != nil {
				if !errors.Is(err, ErrUnknownCommand) {
					b.log.Warn("bad replication command", "err", err)
				}
				continue
			}
			b.count(c.Name())
			if b.handler != nil {
				b.handler(ctx, c)
			}
		case *redis.Pong:
		case *redis.Subscription:
			if m.Kind == "unsubscribe" {
				return errors.New("unsubscribed by the server")
			}
		}
		if time.Since(lastPing) > 30*time.Second {
			if err := ps.Ping(ctx); err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			lastPing = time.Now()
		}
	}
}
