package media

import (
	"bytes"
	"image"
	"image/color/palette"
	"image/gif"
	"testing"
)

// FuzzCountFrames: the container walkers never panic, and for every GIF
// the standard decoder accepts they count the frames it decodes.
func FuzzCountFrames(f *testing.F) {
	var b bytes.Buffer
	g := &gif.GIF{}
	for range 3 {
		g.Image = append(g.Image, image.NewPaletted(image.Rect(0, 0, 4, 3), palette.Plan9[:16]))
		g.Delay = append(g.Delay, 5)
	}
	if err := gif.EncodeAll(&b, g); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte("RIFF\x00\x00\x00\x00WEBPANMF\x02\x00\x00\x00ab"))
	f.Add([]byte("GIF89a"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = countFrames(bytes.NewReader(data), "image/webp")
		n, err := countFrames(bytes.NewReader(data), "image/gif")
		if g, derr := gif.DecodeAll(bytes.NewReader(data)); derr == nil && (err != nil || n != len(g.Image)) {
			t.Fatalf("counted %d frames (%v), decoder found %d", n, err, len(g.Image))
		}
	})
}
