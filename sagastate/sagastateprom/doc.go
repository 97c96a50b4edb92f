// Package sagastateprom exports an orchestrator's transitions (sagastate.Hooks) as
// Prometheus metrics, and the sagas in flight as gauges read at scrape time.
//
// Counters and histograms (namespace "sagabox_saga", label type): started_total,
// compensating_total, completed_total, compensated_total, failed_total (a compensation
// gave up, or an operator aborted), duration_seconds{status} (start to finish; for
// completed sagas the response time), time_to_consistency_seconds (start to completed
// or compensated: how long the participants disagreed) and
// step_duration_seconds{step,op,outcome} (one attempt of a step's command, sent to
// reply or timeout).
// InFlight adds in_flight{type,status} and oldest_in_flight_seconds{type,status} for
// every saga not finished (running, compensating, timeout, failed).
//
// The four indicators: response time is duration_seconds{status="completed"}, throughput is
// rate(completed_total) (and rate(started_total)), compensation success rate is
// compensated_total / (compensated_total + failed_total), time to consistency is
// time_to_consistency_seconds. deploy/ has a dashboard and alert rules built on them.
//
// The hooks report a change once its transaction committed (see sagastate.Hooks); each
// process counts the changes it made, so sum over processes.
package sagastateprom
