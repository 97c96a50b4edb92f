package console_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/sagabox/sagabox/console"
	"github.com/sagabox/sagabox/sagastate"
)

// client fetches the confirmation page of path (keeping the CSRF cookie) and returns
// the token of its form.
func confirmPage(t *testing.T, c *http.Client, rawURL string, header http.Header) string {
	t.Helper()
	req, _ := http.NewRequest("GET", rawURL, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s\n%s", rawURL, resp.Status, body)
	}
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on %s", rawURL)
	}
	return string(m[1])
}

func post(t *testing.T, c *http.Client, rawURL string, form url.Values, header http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", rawURL, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func newClient() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func TestActionsRefuseForgedRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{})
	id := f.ids[sagastate.SagaFailed]
	action := srv.URL + "/sagas/" + id.String() + "/abort"
	c := newClient()
	tok := confirmPage(t, c, action, nil)

	for name, tc := range map[string]struct {
		client *http.Client
		form   url.Values
		header http.Header
	}{
		"NoToken":       {c, url.Values{"reason": {"x"}}, nil},
		"WrongToken":    {c, url.Values{"reason": {"x"}, "csrf": {strings.Repeat("A", 43)}}, nil},
		"NoCookie":      {newClient(), url.Values{"reason": {"x"}, "csrf": {tok}}, nil},
		"CrossSite":     {c, url.Values{"reason": {"x"}, "csrf": {tok}}, http.Header{"Sec-Fetch-Site": {"cross-site"}}},
		"ForeignOrigin": {c, url.Values{"reason": {"x"}, "csrf": {tok}}, http.Header{"Origin": {"https://evil.example"}}},
	} {
		if resp := post(t, tc.client, action, tc.form, tc.header); resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s, want 403", name, resp.Status)
		}
	}
	if s := f.get(t, id); !s.AbortedAt.IsZero() {
		t.Fatal("a forged request aborted the saga")
	}
	// The console's own form works.
	if resp := post(t, c, action, url.Values{"reason": {"settled by hand"}, "csrf": {tok}}, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("genuine abort: %s", resp.Status)
	}
	if s := f.get(t, id); s.AbortedAt.IsZero() {
		t.Fatal("the genuine abort did not abort")
	}
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{BasicAuthUser: "ops", BasicAuthPassword: "s3cret"})
	for _, tc := range []struct {
		user, pass string
		want       int
	}{{"", "", 401}, {"ops", "wrong", 401}, {"other", "s3cret", 401}, {"ops", "s3cret", 200}} {
		req, _ := http.NewRequest("GET", srv.URL+"/sagas", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("user %q password %q: %s, want %d", tc.user, tc.pass, resp.Status, tc.want)
		}
	}
}

func TestTrustedHeaderNamesTheOperator(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.mount(t, "/ops/console", console.Config{TrustedHeader: "X-Forwarded-User"})
	resp, err := http.Get(srv.URL + "/ops/console/sagas")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without the proxy's header: %s, want 401", resp.Status)
	}
	who := http.Header{"X-Forwarded-User": {"alice@example.com"}}
	id := f.ids[sagastate.SagaFailed]
	action := srv.URL + "/ops/console/sagas/" + id.String() + "/abort"
	c := newClient()
	tok := confirmPage(t, c, action, who)
	resp = post(t, c, action, url.Values{"reason": {"double charge refunded"}, "csrf": {tok}}, who)
	if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/ops/console/sagas/"+id.String()) {
		t.Fatalf("abort: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	if s := f.get(t, id); !hasEvent(s, sagastate.EventSagaFailed, "double charge refunded (by alice@example.com)") {
		t.Fatalf("the log does not name the operator: %+v", s.Events)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for name, cfg := range map[string]console.Config{
		"HalfBasicAuth":  {BasicAuthUser: "ops"},
		"AuthTwice":      {BasicAuthUser: "ops", BasicAuthPassword: "x", TrustedHeader: "X-User"},
		"Prefix":         {Prefix: "console"},
		"Schema":         {Schema: "Bad-Name"},
		"PageSize":       {PageSize: -1},
		"RefreshTooFast": {RefreshInterval: 1},
	} {
		if _, err := console.New(f.db.Pool, cfg); !errors.Is(err, console.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
}

func TestMissingTablesSayWhatToDo(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := f.serve(t, console.Config{Schema: "elsewhere"})
	resp, err := http.Get(srv.URL + "/sagas")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 || !strings.Contains(string(body), "sagactl migrate up --schema elsewhere") {
		t.Fatalf("%s\n%s", resp.Status, body)
	}
}
