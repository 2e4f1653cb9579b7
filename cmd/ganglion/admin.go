package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/storage"
	"ganglion/internal/userdir"
)

// rebuildUserDirectory asks for a full rebuild of the user directory, the
// job Synapse runs as its populate_user_directory background updates. It
// works on the database, as Synapse's admins do by queueing those updates,
// so the server may be running or not: the instance named by
// update_user_directory_from_worker rebuilds in the background as soon as it
// notices (or when it next starts), while searches keep being served from
// the tables as they fill.
func rebuildUserDirectory(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("rebuild-user-directory", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "config file (repeatable; for the database and update_user_directory_from_worker)")
	fs.Var(&files, "config-path", "alias of -c")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("rebuild-user-directory: -c is required")
	}
	cfg, err := config.Load(files, os.Getenv)
	if err != nil {
		return err
	}
	engine := storage.SQLite
	if cfg.Database.Engine() == config.EnginePostgres {
		engine = storage.Postgres
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	db, err := storage.Open(ctx, storage.Options{Engine: engine, DSN: cfg.Database.DSN(), MaxConns: 1}, slog.New(slog.DiscardHandler))
	if err != nil {
		return fmt.Errorf("rebuild-user-directory: open database: %w", err)
	}
	defer db.Close()
	// The directory's tables must exist: a database the main process has
	// not migrated yet gets its directory built at first start anyway.
	have, err := db.SchemaVersion(ctx)
	if err != nil {
		return fmt.Errorf("rebuild-user-directory: read schema version: %w", err)
	}
	if want := storage.LatestSchemaVersion(); have != want {
		return fmt.Errorf("rebuild-user-directory: the database schema is at version %d, this binary's is %d: start the main process (it migrates) first", have, want)
	}
	if err := userdir.NewStore(db, cfg.ServerName).RequestRebuild(ctx); err != nil {
		return fmt.Errorf("rebuild-user-directory: %w", err)
	}
	fmt.Fprintln(out, "Requested a full rebuild of the user directory. The instance that updates it (update_user_directory_from_worker, "+
		"main by default) rebuilds it in the background within a few seconds if it is running, else when it next starts; "+
		"until it is done, searches see a partial directory.")
	return nil
}
