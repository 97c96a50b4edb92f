package sagastate

// SetCrashHook makes o call fn at named points inside its transactions; an error from fn
// rolls the transaction back, as if the process had died there.
func SetCrashHook(o *Orchestrator, fn func(point string) error) { o.crashHook = fn }
