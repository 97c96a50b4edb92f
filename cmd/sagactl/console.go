package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/sagastate"
)

// opsOpts are the flags of the console and inbox subcommands.
type opsOpts struct {
	addr, prefix, basicUser, trustedHeader string
	readOnly                               bool
	consumer                               string
}

// consolePasswordEnv holds the basic-auth password, kept off the command line (ps shows it).
const consolePasswordEnv = "SAGABOX_CONSOLE_PASSWORD"

func init() {
	register(&command{
		name: "console", run: serveConsole,
		summary: "Serve the web console (sagas, outbox, inbox dead letters, relays, stats) on --addr.",
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.ops.addr, "addr", "127.0.0.1:8080", "where to listen; the default answers this machine only")
			fs.BoolVar(&o.ops.readOnly, "read-only", false, "hide every action; the server refuses them")
			fs.StringVar(&o.ops.prefix, "prefix", "", "serve under this path (e.g. /sagabox behind a proxy)")
			fs.StringVar(&o.ops.basicUser, "basic-auth-user", "", "require HTTP basic auth as this user; the password comes from $"+consolePasswordEnv)
			fs.StringVar(&o.ops.trustedHeader, "trusted-header", "", "trust this header (e.g. X-Forwarded-User) set by an authenticating proxy to name the operator; requests without it are refused")
			fs.StringVar(&o.replyTopic, "reply-topic", sagastate.DefaultReplyTopic, "the orchestrators' reply topic, for saga retries")
		},
	})
}

func serveConsole(ctx context.Context, a *app, o *opts, _ []string) error {
	cfg := console.Config{Schema: o.schema, Prefix: o.ops.prefix, ReadOnly: o.ops.readOnly, TrustedHeader: o.ops.trustedHeader,
		ReplyTopic: o.replyTopic, Logger: slog.New(slog.NewTextHandler(a.stderr, nil))}
	if o.ops.basicUser != "" {
		cfg.BasicAuthUser, cfg.BasicAuthPassword = o.ops.basicUser, a.getenv(consolePasswordEnv)
		if cfg.BasicAuthPassword == "" {
			return fmt.Errorf("console: --basic-auth-user needs the password in $%s", consolePasswordEnv)
		}
	}
	pool, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	h, err := console.New(pool, cfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", o.ops.addr)
	if err != nil {
		return fmt.Errorf("console: cannot listen on %s: %w", o.ops.addr, err)
	}
	if host, _, _ := net.SplitHostPort(l.Addr().String()); !net.ParseIP(host).IsLoopback() && cfg.BasicAuthUser == "" && cfg.TrustedHeader == "" {
		fmt.Fprintf(a.stderr, "sagactl console: warning: %s is reachable from other machines and asks no one to sign in; "+
			"use --basic-auth-user, or an SSO proxy with --trusted-header, or --read-only\n", l.Addr())
	}
	mux := http.NewServeMux()
	if cfg.Prefix != "" {
		mux.Handle(cfg.Prefix+"/", h)
		mux.Handle("/{$}", http.RedirectHandler(cfg.Prefix+"/", http.StatusSeeOther))
	} else {
		mux.Handle("/", h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(a.stdout, "console listening on http://%s%s/\n", l.Addr(), cfg.Prefix)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("console: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
