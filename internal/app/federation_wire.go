package app

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"

	"ganglion/internal/events"
	"ganglion/internal/federation/client"
	"ganglion/internal/federation/fedproxy"
	"ganglion/internal/federation/sender"
	"ganglion/internal/mxhttp"
	"ganglion/internal/replication"
	"ganglion/internal/rooms"
)

// wireFederation builds what every process has of federation: the
// outbound client, the server keys (our key server, the notary, the
// keyring that fetches through the client) and, on the instances named by
// federation_sender_instances, the federation sender with the EDUs of
// the typing, receipts, presence (when presence.enabled), device_lists and
// to_device streams.
//
// With outbound_federation_restricted_to, the named instances serve the
// outbound proxy on their replication listener and every other process's
// client sends through them (rpc and rpcServer are nil without a fleet).
func (p *Process) wireFederation(mux *mxhttp.Mux, srv *mxhttp.Server, key events.SigningKey, store *rooms.Store,
	receiptRows sender.ReceiptRows, typingReader sender.TypingReader, presenceRows sender.PresenceRows,
	rpc *replication.Client, rpcServer *replication.Server) error {
	cfg := p.cfg
	restricted := cfg.OutboundFederationRestrictedTo
	proxy := len(restricted) > 0 && slices.Contains(restricted, cfg.InstanceName())
	var opts []client.Option
	if len(restricted) > 0 && !proxy {
		if rpc == nil {
			return fmt.Errorf("outbound_federation_restricted_to names %v, which %s can only reach over replication (redis.enabled)",
				restricted, cfg.InstanceName())
		}
		opts = append(opts, client.WithVia(fedproxy.NewVia(rpc, restricted)))
	}
	fc, err := client.NewFromConfig(cfg, key, p.log.With("module", "federation.client"), opts...)
	if err != nil {
		return fmt.Errorf("federation client: %w", err)
	}
	if proxy && rpcServer != nil {
		fedproxy.Serve(rpcServer, fc)
	}
	p.onShutdown = append(p.onShutdown, func(context.Context) error { fc.CloseIdleConnections(); return nil })
	p.federationClient = fc
	if err := p.wireServerKeys(mux, srv, key, fc, fc); err != nil {
		return err
	}
	senders := cfg.FederationSenders()
	if !slices.Contains(senders, cfg.InstanceName()) {
		return nil
	}
	s := sender.New(p.db, p.reg, store, transactionSender{fc}, sender.Options{
		ServerName:      cfg.ServerName,
		Instance:        cfg.InstanceName(),
		Instances:       senders,
		MinRetry:        cfg.Federation.MinRetryInterval(),
		MaxRetry:        cfg.Federation.MaxRetryInterval(),
		RetryMultiplier: cfg.Federation.DestinationRetryMultiplier,
	}, p.log.With("module", "federation.sender"))
	edus := sender.Sources{Receipts: receiptRows, Typing: typingReader, DeviceLists: true, ToDevice: true}
	if cfg.Presence.Enabled {
		edus.Presence = presenceRows
	}
	s.FollowEDUs(edus)
	p.runners = append(p.runners, s.Run)
	return nil
}

// transactionSender sends federation transactions with the signed client.
type transactionSender struct{ c *client.Client }

func (t transactionSender) SendTransaction(ctx context.Context, destination, txnID string, txn *sender.Transaction) error {
	// The answer's per-PDU results only report the receiver's verdict on
	// each event; a 200 is the acknowledgement the queue needs.
	var resp json.RawMessage
	return t.c.SignedPutJSON(ctx, destination, "/_matrix/federation/v1/send/"+url.PathEscape(txnID), txn, &resp)
}
