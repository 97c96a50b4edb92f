// Package deploy holds no code: grafana-dashboard.json (a Grafana dashboard of every
// sagabox component, with the four saga indicators on top) and alerts.yml (Prometheus
// alert rules: relay lag, held-back publishing, dead letters, stuck sagas, compensation
// failures, consumer lag). deploy_test.go runs a relay, an orchestrator, a participant
// and a consumer on PostgreSQL and kfake, scrapes each one's /metrics, and fails when the
// dashboard or the rules use a metric no component exports, so they cannot drift apart.
// outbox-relay.service is a systemd unit for cmd/outbox-relay.
package deploy
