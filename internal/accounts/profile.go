package accounts

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Profile is a user's global profile.
type Profile struct {
	DisplayName *string `json:"displayname,omitempty"`
	AvatarURL   *string `json:"avatar_url,omitempty"`
}

// GetProfile returns a local user's profile; nil if the user does not exist.
func (s *Service) GetProfile(ctx context.Context, userID string) (*Profile, error) {
	var name, avatar sql.NullString
	err := s.db.Reader().QueryRowContext(ctx, `SELECT displayname, avatar_url FROM profiles WHERE user_id = $1`, userID).
		Scan(&name, &avatar)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get profile of %s: %w", userID, err)
	}
	p := &Profile{}
	if name.Valid {
		p.DisplayName = &name.String
	}
	if avatar.Valid {
		p.AvatarURL = &avatar.String
	}
	return p, nil
}

// SetProfileField updates displayname or avatar_url and propagates the new
// profile into the member events of every room the user is joined to.
func (s *Service) SetProfileField(ctx context.Context, userID, field string, value *string) error {
	col := map[string]string{"displayname": "displayname", "avatar_url": "avatar_url"}[field]
	if col == "" {
		return fmt.Errorf("unknown profile field %q", field)
	}
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO profiles (user_id, `+col+`) VALUES ($1, $2)
			ON CONFLICT (user_id) DO UPDATE SET `+col+` = excluded.`+col, userID, value)
		if err != nil {
			return err
		}
		return s.indexProfile(ctx, tx, userID)
	})
	if err != nil {
		return fmt.Errorf("set %s of %s: %w", field, userID, err)
	}
	if s.hooks == nil {
		return nil
	}
	p, err := s.GetProfile(ctx, userID)
	if err != nil || p == nil {
		return err
	}
	return s.hooks.ProfileChanged(ctx, userID, *p)
}

// ProfileIndex keeps a copy of local users' profiles (the user
// directory's). It is told in the transaction that changes a profile, so
// the copy commits with the change and two racing changes cannot leave it
// holding the older one.
type ProfileIndex interface {
	LocalProfileChanged(ctx context.Context, tx *sql.Tx, userID string, p Profile) error
}

// SetProfileIndex wires the user directory in. Call before serving.
func (s *Service) SetProfileIndex(ix ProfileIndex) { s.profileIndex = ix }

// indexProfile hands the profile as this transaction wrote it to the index.
func (s *Service) indexProfile(ctx context.Context, tx *sql.Tx, userID string) error {
	if s.profileIndex == nil {
		return nil
	}
	var name, avatar sql.NullString
	if err := tx.QueryRowContext(ctx, `SELECT displayname, avatar_url FROM profiles WHERE user_id = $1`, userID).
		Scan(&name, &avatar); err != nil {
		return fmt.Errorf("read profile of %s: %w", userID, err)
	}
	var p Profile
	if name.Valid {
		p.DisplayName = &name.String
	}
	if avatar.Valid {
		p.AvatarURL = &avatar.String
	}
	return s.profileIndex.LocalProfileChanged(ctx, tx, userID, p)
}
