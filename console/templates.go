package console

import (
	"fmt"
	"html/template"
	"net/url"
)

var pageNames = []string{"sagas", "saga", "outbox", "inbox", "relays", "stats", "confirm", "error"}

// parseTemplates parses each page with the shared layout.
func (c *console) parseTemplates() error {
	funcs := template.FuncMap{"query": url.QueryEscape}
	c.pages = map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(assets, "assets/templates/layout.html", "assets/templates/"+name+".html")
		if err != nil {
			return fmt.Errorf("console: template %s: %w", name, err)
		}
		c.pages[name] = t
	}
	return nil
}

func urlQuery(s string) string { return url.QueryEscape(s) }
