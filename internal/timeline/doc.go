// Package timeline draws a saga's execution log as a timeline: one lane per step,
// its attempts and compensations as bars on a shared time axis, failures marked,
// saga-level events as vertical markers. It renders SVG (sagactl saga show --svg),
// a standalone HTML page (--html) and plain text for terminals (orderdemo).
//
// It only reads: a Timeline is built from events already persisted, so drawing a
// saga never changes it. Events are taken in the order given (the log's order);
// a bar still open when the log ends is drawn up to the end and marked open.
package timeline
