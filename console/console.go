package console

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/sagastate"
)

// Defaults of Config's fields.
const (
	PageSizeDefault        = 50
	RefreshIntervalDefault = 2 * time.Second
	LeaseTTLDefault        = 10 * time.Second // the relay's LeaseTTL default
)

// ErrInvalidConfig means a Config field is wrong.
var ErrInvalidConfig = errors.New("invalid console config")

// Config configures the console.
type Config struct {
	// Schema holds sagabox's tables. Defaults to "sagabox".
	Schema string
	// Prefix is the path the handler is mounted at, e.g. "/console" for
	// mux.Handle("/console/", h); links are built under it. Defaults to "" (the root).
	Prefix string
	// ReadOnly hides every action and makes the server refuse them. Defaults to false.
	ReadOnly bool
	// BasicAuthUser and BasicAuthPassword, when set (both or neither), require HTTP basic
	// auth on every request. Defaults to none.
	BasicAuthUser, BasicAuthPassword string
	// TrustedHeader names a header an authenticating proxy sets to the operator's name
	// (e.g. "X-Forwarded-User"); requests without it are refused and its value is recorded
	// with every action. Only use it when nothing but the proxy can reach the console.
	// Defaults to none.
	TrustedHeader string
	// PageSize is the number of rows per list page. Defaults to 50.
	PageSize int
	// RefreshInterval is how often the page of an unfinished saga redraws itself.
	// Defaults to 2s.
	RefreshInterval time.Duration
	// LeaseTTL is the relays' LeaseTTL, used to show when a relay last renewed its lease
	// (its expiry minus the TTL). Defaults to 10s, the relay's default.
	LeaseTTL time.Duration
	// ReplyTopic is the orchestrators' reply topic, where a retried step's participant
	// answers. Defaults to sagastate.DefaultReplyTopic.
	ReplyTopic string
	// Logger receives every action with its operator and reason. Defaults to discarding.
	Logger *slog.Logger
}

func (c *Config) applyDefaults() {
	if c.Schema == "" {
		c.Schema = migrations.DefaultSchema
	}
	c.Prefix = strings.TrimSuffix(c.Prefix, "/")
	if c.PageSize == 0 {
		c.PageSize = PageSizeDefault
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = RefreshIntervalDefault
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = LeaseTTLDefault
	}
	if c.ReplyTopic == "" {
		c.ReplyTopic = sagastate.DefaultReplyTopic
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	var errs []error
	if err := migrations.ValidateSchema(c.Schema); err != nil {
		errs = append(errs, err)
	}
	if c.Prefix != "" && !strings.HasPrefix(c.Prefix, "/") {
		errs = append(errs, fmt.Errorf("console: the path prefix %q must start with / (e.g. /console)", c.Prefix))
	}
	if (c.BasicAuthUser == "") != (c.BasicAuthPassword == "") {
		errs = append(errs, errors.New("BasicAuthUser and BasicAuthPassword go together: set both or neither"))
	}
	if c.BasicAuthUser != "" && c.TrustedHeader != "" {
		errs = append(errs, errors.New("choose basic auth or TrustedHeader, not both"))
	}
	if c.PageSize < 1 || c.PageSize > 1000 {
		errs = append(errs, fmt.Errorf("PageSize is %d; it must be between 1 and 1000", c.PageSize))
	}
	if c.RefreshInterval < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("RefreshInterval is %v; it must be at least 100ms", c.RefreshInterval))
	}
	if c.LeaseTTL < 0 {
		errs = append(errs, fmt.Errorf("LeaseTTL is %v; it must not be negative", c.LeaseTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

//go:embed assets
var assets embed.FS

// console serves the pages; one per New.
type console struct {
	cfg   Config
	pool  *pgxpool.Pool
	orch  *sagastate.Orchestrator
	pages map[string]*template.Template
	q     queries
}

// New returns the console's handler over the sagabox tables that pool reaches. It checks
// the configuration, not the database: a page whose tables are missing says so.
func New(pool *pgxpool.Pool, cfg Config) (http.Handler, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	orch, err := sagastate.New(pool, sagastate.Config{Schema: cfg.Schema, ReplyTopic: cfg.ReplyTopic})
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	c := &console{cfg: cfg, pool: pool, orch: orch, q: newQueries(cfg.Schema)}
	if err := c.parseTemplates(); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, c.cfg.Prefix+"/sagas", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /sagas", c.sagaList)
	mux.HandleFunc("GET /sagas/{id}", c.sagaDetail)
	mux.HandleFunc("GET /outbox", c.outboxPage)
	mux.HandleFunc("GET /inbox", c.inboxPage)
	mux.HandleFunc("GET /relays", c.relaysPage)
	mux.HandleFunc("GET /stats", c.statsPage)
	for _, a := range c.actions() {
		mux.HandleFunc("GET "+a.path, c.confirm(a))
		mux.HandleFunc("POST "+a.path, c.perform(a))
	}
	var h http.Handler = mux
	h = http.NewCrossOriginProtection().Handler(h)
	h = c.secure(h)
	if cfg.Prefix != "" {
		h = http.StripPrefix(cfg.Prefix, h)
	}
	return h, nil
}

// secure authenticates the request and sets the headers every page needs.
func (c *console) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case c.cfg.BasicAuthUser != "":
			u, p, ok := r.BasicAuth()
			okU := subtle.ConstantTimeCompare([]byte(u), []byte(c.cfg.BasicAuthUser)) == 1
			okP := subtle.ConstantTimeCompare([]byte(p), []byte(c.cfg.BasicAuthPassword)) == 1
			if !ok || !okU || !okP {
				w.Header().Set("WWW-Authenticate", `Basic realm="sagabox console", charset="UTF-8"`)
				http.Error(w, "sign in to use the sagabox console", http.StatusUnauthorized)
				return
			}
		case c.cfg.TrustedHeader != "":
			if strings.TrimSpace(r.Header.Get(c.cfg.TrustedHeader)) == "" {
				http.Error(w, "this console is served behind an authenticating proxy; the request did not come through it (no "+
					c.cfg.TrustedHeader+" header)", http.StatusUnauthorized)
				return
			}
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

// operator names who acts: the basic-auth user, the proxy's header, or the client address.
func (c *console) operator(r *http.Request) string {
	switch {
	case c.cfg.BasicAuthUser != "":
		u, _, _ := r.BasicAuth()
		return u
	case c.cfg.TrustedHeader != "":
		return strings.TrimSpace(r.Header.Get(c.cfg.TrustedHeader))
	}
	return "console@" + r.RemoteAddr
}

const csrfCookie = "sagabox_csrf"

// csrfToken returns the request's double-submit token, setting the cookie when absent.
// Forms echo it in a hidden field; a cross-site page can neither read the cookie nor
// guess it. It backs up CrossOriginProtection for browsers without Sec-Fetch-Site.
func (c *console) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if ck, err := r.Cookie(csrfCookie); err == nil && len(ck.Value) >= 32 {
		return ck.Value
	}
	b := make([]byte, 32)
	rand.Read(b)
	tok := base64.RawURLEncoding.EncodeToString(b)
	path := c.cfg.Prefix
	if path == "" {
		path = "/"
	}
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: tok, Path: path, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	return tok
}

func validCSRF(r *http.Request) bool {
	ck, err := r.Cookie(csrfCookie)
	if err != nil || len(ck.Value) < 32 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(ck.Value), []byte(r.PostFormValue("csrf"))) == 1
}

// page is what every template receives.
type page struct {
	Base     string // the Prefix
	Title    string
	Nav      string // which tab is active
	ReadOnly bool
	CSRF     string
	Flash    string
	Error    string
	Data     any
}

func (c *console) render(w http.ResponseWriter, r *http.Request, name, title string, data any) {
	p := page{Base: c.cfg.Prefix, Title: title, Nav: name, ReadOnly: c.cfg.ReadOnly, Data: data, Flash: r.URL.Query().Get("done")}
	if !c.cfg.ReadOnly {
		p.CSRF = c.csrfToken(w, r)
	}
	var b bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&b, "layout", p); err != nil {
		c.cfg.Logger.Error("console: render", "page", name, "err", err)
		http.Error(w, "console: cannot draw the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// fail draws an error page: what went wrong and, for a missing table, what to do.
func (c *console) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	msg := err.Error()
	if strings.Contains(msg, "SQLSTATE 42P01") { // undefined_table
		msg += fmt.Sprintf(" — the sagabox tables are missing from schema %q: run 'sagactl migrate up --schema %s' (or check Schema)", c.cfg.Schema, c.cfg.Schema)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		status = http.StatusNotFound
	}
	w.WriteHeader(status)
	p := page{Base: c.cfg.Prefix, Title: "Error", ReadOnly: c.cfg.ReadOnly, Error: msg}
	if err := c.pages["error"].ExecuteTemplate(w, "layout", p); err != nil {
		fmt.Fprintf(w, "console: %s", msg)
	}
}
