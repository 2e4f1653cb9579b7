package config

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// LogSettings is the effective logging setup. Ganglion's own log config
// file is a small YAML mapping:
//
//	level: info     # debug | info | warn | error
//	format: text    # text | json
//
// A Python logging config (Synapse's log.config, recognised by its version,
// handlers, loggers, formatters or root keys) is accepted too: only
// root.level is taken from it and everything else is ignored, so existing
// Synapse deployments start without editing their log files.
type LogSettings struct {
	Level  string // debug, info, warn or error
	Format string // text or json
	// FromPython is set when the file was a Python logging config.
	FromPython bool
}

// DefaultLogSettings is used when no log config is set.
func DefaultLogSettings() LogSettings {
	return LogSettings{Level: "info", Format: "text"}
}

// SlogLevel converts Level for log/slog.
func (l LogSettings) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// ReadLogConfig reads a log config file in either form described on
// LogSettings.
func ReadLogConfig(path string) (LogSettings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return LogSettings{}, err
	}
	return ParseLogConfig(data)
}

// ParseLogConfig parses the contents of a log config file.
func ParseLogConfig(data []byte) (LogSettings, error) {
	out := DefaultLogSettings()
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return LogSettings{}, fmt.Errorf("parse log config: %w", err)
	}
	for _, k := range []string{"version", "handlers", "loggers", "formatters", "root"} {
		if _, ok := raw[k]; ok {
			out.FromPython = true
			break
		}
	}
	if out.FromPython {
		// Python levels are upper-case names; anything unusual (numeric
		// levels, NOTSET) falls back to info instead of failing startup.
		if root, ok := raw["root"].(map[string]any); ok {
			if s, ok := root["level"].(string); ok {
				if lvl, err := normalizeLevel(s); err == nil {
					out.Level = lvl
				}
			}
		}
		return out, nil
	}
	if v, ok := raw["level"]; ok {
		s, _ := v.(string)
		lvl, err := normalizeLevel(s)
		if err != nil {
			return LogSettings{}, err
		}
		out.Level = lvl
	}
	if v, ok := raw["format"]; ok {
		s, _ := v.(string)
		switch f := strings.ToLower(s); f {
		case "text", "json":
			out.Format = f
		default:
			return LogSettings{}, fmt.Errorf("format: want text or json, got %q", fmt.Sprint(v))
		}
	}
	return out, nil
}

func normalizeLevel(s string) (string, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return "debug", nil
	case "info":
		return "info", nil
	case "warn", "warning":
		return "warn", nil
	case "error", "critical", "fatal":
		return "error", nil
	}
	return "", fmt.Errorf("level: want debug, info, warn or error, got %q", s)
}
