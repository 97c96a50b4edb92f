package console_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

var (
	browserOnce   sync.Once
	browserCtx    context.Context
	browserErr    string
	browserCancel context.CancelFunc
)

// chromium finds the browser, or skips the test on a machine without one, except in CI
// (CI=true), where .ci/run installs it and a missing browser is a failure.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no Chromium on PATH (chromium, chromium-browser, google-chrome); CI must install it (apt-get install -y chromium)")
	}
	t.Skip("no Chromium on PATH; install it (apt-get install -y chromium) to run the browser tests")
	return ""
}

// browser returns a new tab of the one headless Chromium this test binary starts.
func browser(t testing.TB) context.Context {
	t.Helper()
	path := chromium(t)
	browserOnce.Do(func() {
		dir, err := os.MkdirTemp("", "console-chromium-")
		if err != nil {
			browserErr = err.Error()
			return
		}
		opts := append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(dir),
			chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
			chromedp.Flag("disable-sync", true), chromedp.NoFirstRun, chromedp.WindowSize(1400, 1000))
		alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
		ctx, cancel := chromedp.NewContext(alloc)
		if err := chromedp.Do(ctx); err != nil { // start the browser now
			browserErr = "start Chromium: " + err.Error()
		}
		browserCtx = ctx
		browserCancel = func() { cancel(); cancelAlloc(); os.RemoveAll(dir) }
	})
	if browserErr != "" {
		t.Fatal(browserErr)
	}
	tab, cancel := chromedp.NewContext(browserCtx)
	// Generous: two cores shared by many processes.
	tab, cancelT := context.WithTimeout(tab, 90*time.Second)
	t.Cleanup(func() { cancelT(); cancel() })
	return tab
}

func run(t testing.TB, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// texts returns the text of every element matching sel (none is fine).
func texts(t testing.TB, ctx context.Context, sel string) []string {
	t.Helper()
	out, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll(`+quoteJS(sel)+`)).map(e => e.textContent.trim())`))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t testing.TB, ctx context.Context, sel string) int { return len(texts(t, ctx, sel)) }

func quoteJS(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// screenshot saves the page to $CONSOLE_SCREENSHOTS/name.png when that is set.
func screenshot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("CONSOLE_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// navigating runs steps that load a new page (a click on a link or a submit) and waits
// until the new document has loaded, so the next query does not see the old one.
func navigating(t testing.TB, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	run(t, ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](`window.__consoleOldPage = true`)(ctx, tg)
		return err
	}))
	run(t, ctx, steps...)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fresh, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__consoleOldPage !== true && document.readyState === "complete"`))
		if err == nil && fresh {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new page loaded within 60s (last error %v)", err)
		}
	}
}
