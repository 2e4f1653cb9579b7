package media

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color/palette"
	"image/draw"
	"image/gif"
	"image/jpeg"
	"image/png"
	"io"

	"github.com/disintegration/imaging"
	"github.com/gen2brain/webp"
)

// ThumbnailSize is a thumbnail the repository makes for every image.
type ThumbnailSize struct {
	Width, Height int
	Method        string // "crop" or "scale"
}

// thumbnailable lists the source types we decode. SVG is left out on
// purpose: rendering it means running an untrusted document.
var thumbnailable = map[string]bool{
	"image/png": true, "image/jpeg": true, "image/jpg": true, "image/gif": true, "image/webp": true,
}

// errNotThumbnailable: the source cannot (or may not) be decoded.
var errNotThumbnailable = errors.New("media cannot be thumbnailed")

// decodeSource reads the first frame of an image, refusing images with
// more than maxPixels pixels before decoding their pixels.
func decodeSource(r io.ReadSeeker, contentType string, maxPixels int64) (image.Image, error) {
	cfg, _, err := image.DecodeConfig(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxPixels || cfg.Width == 0 || cfg.Height == 0 {
		return nil, fmt.Errorf("%w: %dx%d pixels", errNotThumbnailable, cfg.Width, cfg.Height)
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	img, _, err := image.Decode(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
	}
	return img, nil
}

// resize applies a thumbnail method. scale fits the image inside w×h and
// never enlarges it; crop fills exactly w×h from the centre, but never
// beyond the source's own size (keeping the requested aspect ratio).
func resize(img image.Image, w, h int, method string) image.Image {
	b := img.Bounds()
	if method == "crop" {
		if w > b.Dx() || h > b.Dy() {
			f := min(float64(b.Dx())/float64(w), float64(b.Dy())/float64(h))
			w, h = max(1, int(float64(w)*f)), max(1, int(float64(h)*f))
		}
		return imaging.Fill(img, w, h, imaging.Center, imaging.Lanczos)
	}
	if w >= b.Dx() && h >= b.Dy() {
		return img
	}
	return imaging.Fit(img, w, h, imaging.Lanczos)
}

// encodeStill writes a still thumbnail: JPEG for JPEG sources (photos),
// PNG otherwise (keeps transparency).
func encodeStill(img image.Image, sourceType string) ([]byte, string, error) {
	var buf bytes.Buffer
	if sourceType == "image/jpeg" || sourceType == "image/jpg" {
		if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: 80}); err != nil {
			return nil, "", fmt.Errorf("encode jpeg thumbnail: %w", err)
		}
		return buf.Bytes(), "image/jpeg", nil
	}
	if err := png.Encode(&buf, img); err != nil {
		return nil, "", fmt.Errorf("encode png thumbnail: %w", err)
	}
	return buf.Bytes(), "image/png", nil
}

// makeStill produces a still thumbnail of the source.
func makeStill(r io.ReadSeeker, contentType string, maxPixels int64, size ThumbnailSize) ([]byte, string, error) {
	img, err := decodeSource(r, contentType, maxPixels)
	if err != nil {
		return nil, "", err
	}
	return encodeStill(resize(img, size.Width, size.Height, size.Method), contentType)
}

// countFrames counts an animation's frames from its container structure,
// without decoding any pixels, so that the pixel budget is checked before
// memory is spent on the frames.
func countFrames(r io.Reader, contentType string) (int, error) {
	br := bufio.NewReader(r)
	switch contentType {
	case "image/gif":
		return countGIFFrames(br)
	case "image/webp":
		return countWebPFrames(br)
	}
	return 1, nil
}

func countGIFFrames(br *bufio.Reader) (int, error) {
	head := make([]byte, 13) // signature, version, logical screen descriptor
	if _, err := io.ReadFull(br, head); err != nil {
		return 0, err
	}
	if head[10]&0x80 != 0 {
		if _, err := br.Discard(3 << ((head[10] & 7) + 1)); err != nil {
			return 0, err
		}
	}
	skipSubBlocks := func() error {
		for {
			n, err := br.ReadByte()
			if err != nil || n == 0 {
				return err
			}
			if _, err := br.Discard(int(n)); err != nil {
				return err
			}
		}
	}
	frames := 0
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, err
		}
		switch b {
		case 0x21: // extension: label, then data sub-blocks
			if _, err := br.ReadByte(); err != nil {
				return 0, err
			}
			if err := skipSubBlocks(); err != nil {
				return 0, err
			}
		case 0x2c: // image descriptor
			frames++
			desc := make([]byte, 9)
			if _, err := io.ReadFull(br, desc); err != nil {
				return 0, err
			}
			if desc[8]&0x80 != 0 {
				if _, err := br.Discard(3 << ((desc[8] & 7) + 1)); err != nil {
					return 0, err
				}
			}
			if _, err := br.ReadByte(); err != nil { // LZW minimum code size
				return 0, err
			}
			if err := skipSubBlocks(); err != nil {
				return 0, err
			}
		case 0x3b: // trailer
			return frames, nil
		default:
			return 0, fmt.Errorf("gif: unknown block 0x%02x", b)
		}
	}
}

func countWebPFrames(br *bufio.Reader) (int, error) {
	head := make([]byte, 12)
	if _, err := io.ReadFull(br, head); err != nil {
		return 0, err
	}
	frames := 0
	chunk := make([]byte, 8)
	for {
		if _, err := io.ReadFull(br, chunk); err != nil {
			if errors.Is(err, io.EOF) {
				return max(frames, 1), nil
			}
			return 0, err
		}
		if string(chunk[:4]) == "ANMF" {
			frames++
		}
		size := int(binary.LittleEndian.Uint32(chunk[4:]))
		if _, err := br.Discard(size + size%2); err != nil {
			if errors.Is(err, io.EOF) {
				return max(frames, 1), nil
			}
			return 0, err
		}
	}
}

// composeGIF turns a GIF's frames (which may cover only part of the
// canvas and depend on the previous frames' disposal) into full pictures,
// handing each to add as it is made so only one is held at a time.
func composeGIF(g *gif.GIF, add func(img image.Image, delay int)) {
	canvas := image.NewRGBA(image.Rect(0, 0, g.Config.Width, g.Config.Height))
	for i, fr := range g.Image {
		var saved *image.RGBA
		disposal := byte(0)
		if i < len(g.Disposal) {
			disposal = g.Disposal[i]
		}
		if disposal == gif.DisposalPrevious {
			saved = image.NewRGBA(canvas.Bounds())
			draw.Draw(saved, saved.Bounds(), canvas, image.Point{}, draw.Src)
		}
		draw.Draw(canvas, fr.Bounds(), fr, fr.Bounds().Min, draw.Over)
		delay := 10
		if i < len(g.Delay) {
			delay = g.Delay[i]
		}
		add(canvas, delay)
		switch disposal {
		case gif.DisposalBackground:
			draw.Draw(canvas, fr.Bounds(), image.Transparent, image.Point{}, draw.Src)
		case gif.DisposalPrevious:
			canvas = saved
		}
	}
}

// makeAnimated produces an animated GIF thumbnail, or (nil, nil) when the
// source is not animated. The pixel budget counts every frame.
func makeAnimated(r io.ReadSeeker, contentType string, maxPixels int64, size ThumbnailSize) ([]byte, error) {
	cfg, _, err := image.DecodeConfig(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	n, err := countFrames(r, contentType)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
	}
	if n < 2 {
		return nil, nil
	}
	if int64(cfg.Width)*int64(cfg.Height)*int64(n) > maxPixels {
		return nil, fmt.Errorf("%w: %d frames of %dx%d pixels", errNotThumbnailable, n, cfg.Width, cfg.Height)
	}
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	out := &gif.GIF{}
	add := func(img image.Image, delay int) {
		small := resize(img, size.Width, size.Height, size.Method)
		p := image.NewPaletted(small.Bounds(), palette.Plan9)
		draw.FloydSteinberg.Draw(p, small.Bounds(), small, small.Bounds().Min)
		out.Image = append(out.Image, p)
		out.Delay = append(out.Delay, delay)
	}
	switch contentType {
	case "image/gif":
		g, err := gif.DecodeAll(r)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
		}
		composeGIF(g, add)
	case "image/webp":
		a, err := webp.DecodeAll(r)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errNotThumbnailable, err)
		}
		for i, img := range a.Image {
			delay := 10
			if i < len(a.Delay) {
				delay = max(1, a.Delay[i]/10) // ms to GIF's hundredths
			}
			add(img, delay)
		}
	default:
		return nil, nil
	}
	var buf bytes.Buffer
	if err := gif.EncodeAll(&buf, out); err != nil {
		return nil, fmt.Errorf("encode animated thumbnail: %w", err)
	}
	return buf.Bytes(), nil
}

// pickSize chooses, among the configured sizes, the one to serve for a
// request when thumbnails are not made to measure: the smallest that is at
// least as big as asked with the same method, else the biggest.
func pickSize(sizes []ThumbnailSize, w, h int, method string) (ThumbnailSize, bool) {
	var best, biggest *ThumbnailSize
	for i := range sizes {
		s := &sizes[i]
		if s.Method != method {
			continue
		}
		if s.Width >= w && s.Height >= h && (best == nil || s.Width*s.Height < best.Width*best.Height) {
			best = s
		}
		if biggest == nil || s.Width*s.Height > biggest.Width*biggest.Height {
			biggest = s
		}
	}
	switch {
	case best != nil:
		return *best, true
	case biggest != nil:
		return *biggest, true
	case method == "crop":
		return pickSize(sizes, w, h, "scale")
	}
	return ThumbnailSize{}, false
}
