package storage

import (
	"context"
	"io/fs"
)

// Hooks for tests of the migration machinery, which need migration sets
// other than the embedded one.

func ParseMigrations(fsys fs.FS, dir string, engine Engine) ([]migration, error) {
	return parseMigrations(fsys, dir, engine)
}

func (db *DB) MigrateFS(ctx context.Context, fsys fs.FS, dir string) error {
	return db.migrate(ctx, fsys, dir)
}

func MigrationFiles() fs.FS { return migrationFiles }
