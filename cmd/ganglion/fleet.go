package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"ganglion/internal/config"
	"ganglion/internal/fleet"
)

// up runs a whole fleet from a deployment file, or with --generate-only
// only writes its config files.
func up(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "the deployment file")
	genOnly := fs.String("generate-only", "", "write the generated config files into this directory and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) != 1 || fs.NArg() > 0 {
		return errors.New("up: want exactly one deployment file: ganglion up -c deployment.yaml [--generate-only DIR]")
	}
	d, plan, err := fleet.Prepare(files[0], *genOnly)
	if err != nil {
		return err
	}
	if err := fleet.WriteFiles(plan); err != nil {
		return err
	}
	if _, err := fleet.LoadConfigs(plan, os.Getenv); err != nil {
		return err
	}
	if *genOnly != "" {
		fmt.Fprintf(stdout, "Wrote %d files to %s. Run each instance with:\n", len(plan.Files), plan.Dir)
		for _, in := range plan.Instances {
			fmt.Fprintf(stdout, "  ganglion serve")
			for _, f := range in.ConfigFiles {
				fmt.Fprintf(stdout, " -c %s", relPath(f))
			}
			fmt.Fprintln(stdout)
		}
		return nil
	}

	binary, err := os.Executable()
	if err != nil {
		return fmt.Errorf("up: find own binary: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	children := make([]fleet.Child, 0, len(plan.Instances))
	for _, in := range plan.Instances {
		c := fleet.Child{Name: in.Name, Args: in.ServeArgs(), HealthURL: in.HealthURL,
			LogFile: filepath.Join(plan.Dir, in.Name+".log")}
		if in.Name == config.MainInstance {
			children = slices.Insert(children, 0, c)
		} else {
			children = append(children, c)
		}
	}
	log.Info("starting fleet", "deployment", filepath.Join(d.Dir, d.File), "instances", len(children), "run_dir", plan.Dir)
	return fleet.Supervise(ctx, fleet.Options{
		Binary: binary, Children: children, Out: stdout, Log: log,
		MinBackoff: d.Restart.MinBackoff, MaxBackoff: d.Restart.MaxBackoff, ResetAfter: d.Restart.ResetAfter,
		StartupTimeout: d.StartupTimeout, StopTimeout: d.StopTimeout,
	})
}

// relPath shows p relative to the working directory when that is shorter.
func relPath(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && len(r) < len(p) {
		return r
	}
	return p
}

// errInstancesDown makes `ganglion status` exit non-zero.
var errInstancesDown = errors.New("instances down")

// status asks every instance of a fleet for its status.
func status(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "a deployment file, or the shared config file(s) whose instance_map lists the instances")
	asJSON := fs.Bool("json", false, "print the raw reports as JSON")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to try each instance")
	sample := fs.Duration("sample", 0, "ask twice this far apart and show request rates and p99 over that window "+
		"(default: since each instance started)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) == 0 {
		return errors.New("status: -c deployment.yaml or -c homeserver.yaml [-c more.yaml] is required")
	}
	targets, secret, err := statusTargets(files)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return errors.New("status: the config has no instance_map: nothing to ask (a monolith has no status endpoint)")
	}
	var earlier []fleet.Report
	var elapsed time.Duration
	if *sample > 0 {
		earlier = fleet.QueryStatus(ctx, targets, secret, *timeout)
		start := time.Now()
		t := time.NewTimer(*sample)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		elapsed = time.Since(start)
	}
	reports := fleet.QueryStatus(ctx, targets, secret, *timeout)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(reports); err != nil {
			return fmt.Errorf("status: %w", err)
		}
	} else if err := fleet.WriteStatusTableWithRates(stdout, targets, reports,
		fleet.RequestRates(earlier, reports, elapsed)); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if n := fleet.Down(reports); n > 0 {
		return fmt.Errorf("%d of %d %w", n, len(reports), errInstancesDown)
	}
	return nil
}

// statusTargets finds the instances to ask and the replication secret,
// from a deployment file or from shared config files.
func statusTargets(files []string) ([]fleet.Target, string, error) {
	isDeployment := false
	if len(files) == 1 {
		var err error
		if isDeployment, err = fleet.IsDeployment(files[0]); err != nil {
			return nil, "", fmt.Errorf("status: %w", err)
		}
	}
	if !isDeployment {
		cfg, err := config.Load(files, os.Getenv)
		if err != nil {
			return nil, "", err
		}
		return fleet.TargetsFromConfig(cfg), cfg.ReplicationSecret(), nil
	}
	// The main process's config, as `up` would generate it, says the
	// secret; generate it aside so status never touches run_dir.
	tmp, err := os.MkdirTemp("", "ganglion-status-")
	if err != nil {
		return nil, "", fmt.Errorf("status: %w", err)
	}
	defer os.RemoveAll(tmp)
	_, plan, err := fleet.Prepare(files[0], tmp)
	if err != nil {
		return nil, "", err
	}
	if err := fleet.WriteFiles(plan); err != nil {
		return nil, "", err
	}
	for _, in := range plan.Instances {
		if in.Name != config.MainInstance {
			continue
		}
		cfg, err := config.Load(in.ConfigFiles, os.Getenv)
		if err != nil {
			return nil, "", err
		}
		return fleet.TargetsFromPlan(plan), cfg.ReplicationSecret(), nil
	}
	return nil, "", errors.New("status: deployment has no main instance")
}

// generate writes deployment artefacts for other tools: systemd units, a
// Prometheus scrape config.
func generate(args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "prometheus" {
		return generatePrometheus(args[1:], stdout)
	}
	if len(args) == 0 || args[0] != "systemd" {
		return errors.New("generate: want a target: ganglion generate systemd|prometheus -c deployment.yaml [--out …]")
	}
	fs := flag.NewFlagSet("generate systemd", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "the deployment file")
	out := fs.String("out", "", "where to write the units (default: run_dir/systemd)")
	binary := fs.String("binary", "", "path of ganglion on the host (default: this binary)")
	user := fs.String("user", "", "user to run the instances as")
	envFile := fs.String("env-file", "", "environment file for the units (GANGLION_DATABASE_URL, GANGLION_REDIS_URL), optional at run time")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if len(files) != 1 || fs.NArg() > 0 {
		return errors.New("generate systemd: want exactly one deployment file: -c deployment.yaml")
	}
	d, plan, err := fleet.Prepare(files[0], "")
	if err != nil {
		return err
	}
	if err := fleet.WriteFiles(plan); err != nil {
		return err
	}
	if _, err := fleet.LoadConfigs(plan, os.Getenv); err != nil {
		return err
	}
	if *binary == "" {
		if *binary, err = os.Executable(); err != nil {
			return fmt.Errorf("generate systemd: find own binary: %w", err)
		}
	}
	if *envFile != "" {
		if *envFile, err = filepath.Abs(*envFile); err != nil {
			return fmt.Errorf("generate systemd: %w", err)
		}
	}
	units, err := fleet.SystemdUnits(d, plan, fleet.SystemdOptions{Binary: *binary, User: *user, EnvFile: *envFile,
		WorkingDir: d.Dir})
	if err != nil {
		return err
	}
	dir := *out
	if dir == "" {
		dir = filepath.Join(plan.Dir, "systemd")
	}
	if err := fleet.WriteFiles(&fleet.Plan{Dir: dir, Files: units}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Wrote the instances' configs to %s and %d units to %s. Install them with:\n"+
		"  cp %s/*.service %s/%s /etc/systemd/system/ && systemctl daemon-reload\n"+
		"  systemctl enable --now %s", plan.Dir, len(units), dir, dir, dir, fleet.TargetUnit, fleet.TargetUnit)
	for _, in := range plan.Instances {
		fmt.Fprintf(stdout, " %s", fleet.UnitName(in.Name))
	}
	fmt.Fprintln(stdout)
	return nil
}

// generatePrometheus writes the Prometheus scrape config of a deployment
// to --out, or to stdout.
func generatePrometheus(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("generate prometheus", flag.ContinueOnError)
	var files stringList
	fs.Var(&files, "c", "the deployment file")
	out := fs.String("out", "", "file to write (default: stdout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(files) != 1 || fs.NArg() > 0 {
		return errors.New("generate prometheus: want exactly one deployment file: -c deployment.yaml")
	}
	d, err := fleet.Load(files[0])
	if err != nil {
		return err
	}
	data, err := fleet.PrometheusConfig(d)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(data)
		return err
	}
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		return fmt.Errorf("generate prometheus: %w", err)
	}
	fmt.Fprintf(stdout, "Wrote the scrape config to %s.\n", *out)
	return nil
}
