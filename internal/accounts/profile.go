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
		return err
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
