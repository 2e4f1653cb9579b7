package rooms

import (
	"context"
	"net/http"

	"ganglion/internal/mxhttp"
)

// NoticeRooms tells server notices rooms apart (internal/notices owns
// them). A user may not leave theirs, as with Synapse: the next notice
// would otherwise have to make a new room.
type NoticeRooms interface {
	IsServerNoticeRoom(ctx context.Context, roomID, userID string) (bool, error)
}

// SetNoticeRooms installs the check; unset, no room is a notices room.
func (s *Service) SetNoticeRooms(n NoticeRooms) { s.noticeRooms = n }

// checkNoticeLeave refuses userID leaving (or rejecting the invite to)
// their server notices room.
func (s *Service) checkNoticeLeave(ctx context.Context, roomID, userID string) error {
	if s.noticeRooms == nil {
		return nil
	}
	is, err := s.noticeRooms.IsServerNoticeRoom(ctx, roomID, userID)
	if err != nil {
		return err
	}
	if is {
		return mxhttp.WithCode(http.StatusForbidden, "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM", "You cannot leave the server notices room")
	}
	return nil
}
