package app

import (
	"context"
	"time"

	"ganglion/internal/accounts"
	"ganglion/internal/appservice"
	"ganglion/internal/mxhttp"
	"ganglion/internal/receipts"
	"ganglion/internal/rooms"
)

// wireAppservices loads app_service_config_files (refusing to start on any
// problem), hooks the services into accounts and rooms, serves their
// client endpoints, and runs the notifier on the one instance that sends
// transactions (notify_appservices_from_worker).
func (p *Process) wireAppservices(ctx context.Context, acc *accounts.Service, roomSvc *rooms.Service,
	roomStore *rooms.Store, receiptsStore *receipts.Store, typingReader appservice.TypingReader,
	presenceRows appservice.PresenceRows, toDeviceRows appservice.ToDeviceRows, mux *mxhttp.Mux, srv *mxhttp.Server) error {
	regs, err := appservice.LoadRegistrations(p.cfg.AppServiceConfigFiles)
	if err != nil {
		return err
	}
	svc := appservice.NewService(regs, p.cfg.ServerName, acc, appservice.NewClient(30*time.Second), p.log)
	svc.Routes(mux, srv, acc)
	if len(regs) == 0 {
		return nil
	}
	acc.SetAppservices(svc)
	roomSvc.SetAppservices(svc)
	if p.cfg.IsMain() {
		if err := svc.EnsureSenderUsers(ctx); err != nil {
			return err
		}
	}
	if p.cfg.NotifiesAppservices() {
		n := appservice.NewNotifier(p.db, p.reg, roomStore, roomSvc.Formatter("", ""), svc, appservice.NotifierOptions{}, p.log)
		n.FollowReceipts(receiptsStore)
		n.FollowTyping(typingReader)
		n.FollowPresence(presenceRows)
		n.FollowToDevice(toDeviceRows)
		p.runners = append(p.runners, n.Run)
	}
	return nil
}
