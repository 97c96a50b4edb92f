package sagastate

import (
	"sync"
	"time"

	"github.com/google/uuid"
)

// stepCache remembers the steps this orchestrator last wrote for each saga, so that a
// transition reads only the instance row (which it locks anyway) instead of the steps
// too. An entry is used only when the locked row is still the version written, with
// the same xmin: the transaction (or savepoint) that wrote it. A write that rolled back
// leaves an entry whose xmin never commits, so it never matches; a row changed by any
// other writer (another orchestrator process, the sweeper's postpone, an operator's
// hand) has another xmin. The database stays the only state: a miss reads the steps.
type stepCache struct {
	mu  sync.Mutex
	max int
	m   map[uuid.UUID]cachedSteps
}

type cachedSteps struct {
	version int64
	xmin    uint32
	steps   []StepState
}

// stepCacheSize bounds the cache: a few times the sagas a busy orchestrator has in
// flight. Beyond it, arbitrary entries are dropped (they are only a shortcut).
const stepCacheSize = 8192

func newStepCache(max int) *stepCache {
	return &stepCache{max: max, m: make(map[uuid.UUID]cachedSteps)}
}

// get returns the steps of saga id if its row is at version with xmin.
func (c *stepCache) get(id uuid.UUID, version int64, xmin uint32) ([]StepState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || e.version != version || e.xmin != xmin {
		return nil, false
	}
	return e.steps, true
}

func (c *stepCache) has(id uuid.UUID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.m[id]
	return ok
}

// put records the steps of saga s as written at s.Version by the transaction xmin; a
// finished saga is forgotten instead (its replies are stale and rare).
func (c *stepCache) put(s *Instance, xmin uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !s.FinishedAt.IsZero() {
		delete(c.m, s.ID)
		return
	}
	if _, ok := c.m[s.ID]; !ok && len(c.m) >= c.max {
		n := c.max / 8
		for id := range c.m { // map order: arbitrary entries
			if n--; n < 0 {
				break
			}
			delete(c.m, id)
		}
	}
	c.m[s.ID] = cachedSteps{version: s.Version, xmin: xmin, steps: asStored(s.Steps)}
}

func (c *stepCache) forget(id uuid.UUID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

// asStored returns a copy of steps with their times as the tables keep them (times in
// microseconds, timeouts in milliseconds), so a cached step equals the one a read
// would return.
func asStored(steps []StepState) []StepState {
	out := make([]StepState, len(steps))
	us := func(t time.Time) time.Time {
		if t.IsZero() {
			return t
		}
		return t.Truncate(time.Microsecond)
	}
	for i, st := range steps {
		st.Timeout = st.Timeout.Truncate(time.Millisecond)
		st.Deadline, st.NextAttemptAt, st.StartedAt, st.FinishedAt = us(st.Deadline), us(st.NextAttemptAt), us(st.StartedAt), us(st.FinishedAt)
		out[i] = st
	}
	return out
}
