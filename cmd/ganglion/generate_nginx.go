package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"ganglion/internal/router"
)

// generateNginx writes an nginx config equivalent to `ganglion route` for
// the same files:
//
//	ganglion generate nginx -c shared.yaml [-c router.yaml ...] [--out FILE]
//
// The output is an include for nginx's http {} block.
func generateNginx(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("generate nginx", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "config file (repeatable; later files override earlier ones)")
	fs.Var(&files, "config-path", "alias of -c")
	out := fs.String("out", "", "write the config here instead of standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("generate nginx: want the shared config and the router section: ganglion generate nginx -c shared.yaml [-c router.yaml] [--out FILE]")
	}
	cfg, rc, err := router.Load(files, os.Getenv)
	if err != nil {
		return err
	}
	plan, err := router.NewPlan(cfg, rc)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := router.WriteNginx(&buf, plan, rc); err != nil {
		return err
	}
	if *out == "" {
		_, err := stdout.Write(buf.Bytes())
		return err
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("generate nginx: %w", err)
	}
	for _, n := range plan.Notes {
		fmt.Fprintln(os.Stderr, "note:", n)
	}
	fmt.Fprintf(stdout, "Wrote %s. Include it in nginx's http {} block, then: nginx -t && nginx -s reload\n", *out)
	return nil
}
