package sqlfile

import "testing"

func TestParse(t *testing.T) {
	got := Parse(`-- header comment, before any name
-- name: first
-- what it does
SELECT 1;

-- name: second
UPDATE t
SET x = 1 -- trailing comments stay
WHERE y;
`)
	want := map[string]string{
		"first":  "SELECT 1",
		"second": "UPDATE t\nSET x = 1 -- trailing comments stay\nWHERE y",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d statements %q, want %d", len(got), got, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}
