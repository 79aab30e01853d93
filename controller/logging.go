package controller

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// raftLogger hands hashicorp/raft's log lines to the node's slog logger,
// so a controller writes one log format (JSON when not on a terminal)
// with the same field names. Raft's lines below warn are dropped: they
// narrate every election and snapshot.
type raftLogger struct {
	log  *slog.Logger
	name string
	args []any
}

var _ hclog.Logger = (*raftLogger)(nil)

func newRaftLogger(log *slog.Logger) *raftLogger { return &raftLogger{log: log, name: "raft"} }

const raftLogLevel = hclog.Warn

func slogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (l *raftLogger) Log(level hclog.Level, msg string, args ...any) {
	if level < raftLogLevel || level == hclog.Off {
		return
	}
	attrs := append([]any{"component", l.name}, l.args...)
	for i := 0; i+1 < len(args); i += 2 {
		k, v := args[i], args[i+1]
		if k == "error" {
			k = "err"
		}
		attrs = append(attrs, k, v)
	}
	l.log.Log(context.Background(), slogLevel(level), msg, attrs...)
}

func (l *raftLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *raftLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *raftLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *raftLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *raftLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }
func (l *raftLogger) IsTrace() bool                 { return false }
func (l *raftLogger) IsDebug() bool                 { return false }
func (l *raftLogger) IsInfo() bool                  { return false }
func (l *raftLogger) IsWarn() bool                  { return true }
func (l *raftLogger) IsError() bool                 { return true }
func (l *raftLogger) ImpliedArgs() []any            { return l.args }
func (l *raftLogger) Name() string                  { return l.name }
func (l *raftLogger) SetLevel(hclog.Level)          {}
func (l *raftLogger) GetLevel() hclog.Level         { return raftLogLevel }

func (l *raftLogger) With(args ...any) hclog.Logger {
	c := *l
	c.args = append(append([]any{}, l.args...), args...)
	return &c
}

func (l *raftLogger) Named(name string) hclog.Logger {
	c := *l
	c.name = l.name + "." + name
	return &c
}

func (l *raftLogger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

func (l *raftLogger) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(l.log.With("component", l.name).Handler(), slog.LevelWarn)
}

func (l *raftLogger) StandardWriter(o *hclog.StandardLoggerOptions) io.Writer {
	return l.StandardLogger(o).Writer()
}
