// Package participantsprom exports a participant's hooks (participants.Hooks) as
// Prometheus metrics.
//
// Metrics (namespace "sagabox_participant", labels participant and command):
// commands_total{outcome} (the outcome replied: success, failure, retryable, ignored)
// and command_duration_seconds (barrier and handler, inside the inbox transaction).
// A command whose transaction rolls back and comes again counts twice. For the
// consumer loop underneath (lag, retries, dead letters) use package consumerprom
// through participants.Config.Consumer.Hooks. It observes only.
package participantsprom
