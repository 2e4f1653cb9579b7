package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/router"
	"ganglion/internal/tracing"
)

// route runs the built-in reverse proxy in front of a fleet:
//
//	ganglion route -c shared.yaml [-c router.yaml ...]
//
// The files are the fleet's shared config plus any file holding the
// router: section (see internal/router.Config for its format).
func route(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("route", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "config file (repeatable; later files override earlier ones)")
	fs.Var(&files, "config-path", "alias of -c")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("route: want the shared config and the router section: ganglion route -c shared.yaml [-c router.yaml]")
	}
	cfg, rc, err := router.Load(files, os.Getenv)
	if err != nil {
		return err
	}
	log := routerLogger(cfg, rc)
	rt, err := router.New(cfg, rc, log)
	if err != nil {
		return err
	}
	tracer, err := tracing.New(ctx, rc.Name, cfg.OpenTelemetry)
	if err != nil {
		return err
	}
	rt.SetTracer(tracer)
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tracer.Shutdown(sctx); err != nil {
			log.Warn("flush traces", "err", err)
		}
	}()
	if err := rt.Listen(); err != nil {
		return err
	}
	return rt.Run(ctx)
}

// routerLogger is newLogger with the router's own instance name and role:
// loaded from the shared file alone, the config would call itself main.
func routerLogger(cfg *config.Config, rc *router.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.Logging.SlogLevel()}
	var h slog.Handler
	if cfg.Logging.Format == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		h = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(h).With("instance", rc.Name, "role", config.RoleRouter)
}
