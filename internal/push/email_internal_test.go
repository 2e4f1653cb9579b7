package push

import (
	"strings"
	"testing"
	"time"
)

// A mail lists the messages per room in both parts, escapes them in the
// HTML one, and names a single room in the subject.
func TestComposeMail(t *testing.T) {
	e := &EmailSettings{From: "Matrix <noreply@example.org>", AppName: "Matrix", ClientBaseURL: "https://client.example.org/"}
	items := []mailItem{
		{roomID: "!a:example.org", roomName: "Room A", sender: "@x:example.org", body: "<script>hi</script>", ts: 0},
		{roomID: "!a:example.org", roomName: "Room A", sender: "@y:example.org", body: "second", ts: 1000},
	}
	msg := string(e.composeMail("bob@example.org", "@bob:example.org", items, time.Unix(0, 0)))
	for _, want := range []string{
		"Subject: [Matrix] You have 2 unread message(s) in Room A\r\n",
		"To: bob@example.org\r\n",
		"Content-Type: text/plain; charset=UTF-8",
		"Content-Type: text/html; charset=UTF-8",
		"<script>hi</script>",             // plain text: as sent
		"&lt;script&gt;hi&lt;/script&gt;", // HTML: escaped
		"https://client.example.org/#/room/!a:example.org",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("mail lacks %q:\n%s", want, msg)
		}
	}
	if strings.Count(msg, "<li>") != 2 {
		t.Errorf("want two list items:\n%s", msg)
	}
}
