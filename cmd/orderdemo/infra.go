package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/demo"
	"github.com/sagabox/sagabox/internal/embedkafka"
	"github.com/sagabox/sagabox/internal/embedpg"
	"github.com/sagabox/sagabox/migrations"
	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// infra is the database and broker the demo runs on, started here or given.
type infra struct {
	pool       *pgxpool.Pool
	dbURL      string
	brokers    []string
	embedded   bool // the broker is in-process: short consumer-group timeouts are allowed
	describe   string
	svc        *demo.Services
	stopBroker func()
	stopDB     func()
}

func (in *infra) close() {
	if in.pool != nil {
		in.pool.Close()
	}
	if in.stopBroker != nil {
		in.stopBroker()
	}
	if in.stopDB != nil {
		in.stopDB()
	}
}

// startInfra connects to (or starts) PostgreSQL and Kafka. With setup it also
// migrates the toolkit schema, creates the services' tables and the topics.
func startInfra(ctx context.Context, c *config, setup bool, topics []string) (_ *infra, err error) {
	in := &infra{dbURL: c.databaseURL, brokers: c.brokers, embedded: c.fastGroups}
	defer func() {
		if err != nil {
			in.close()
		}
	}()
	dbDesc, brokerDesc := "PostgreSQL at "+redact(in.dbURL), "Kafka at "+fmt.Sprint(in.brokers)
	if in.dbURL == "" {
		cluster, err := embedpg.Start(ctx)
		if err != nil {
			return nil, fmt.Errorf("start a throwaway PostgreSQL (or pass --database-url): %w", err)
		}
		in.stopDB = func() { _ = cluster.Close() }
		in.dbURL = cluster.URL("postgres")
		dbDesc = fmt.Sprintf("throwaway PostgreSQL on 127.0.0.1:%d", cluster.Port())
	}
	if len(in.brokers) == 0 {
		k, err := embedkafka.Start(embedkafka.Options{Partitions: 8})
		if err != nil {
			return nil, fmt.Errorf("start an in-process Kafka broker (or pass --brokers): %w", err)
		}
		in.stopBroker = k.Close
		in.brokers = k.Addrs()
		in.embedded = true
		brokerDesc = "in-process Kafka-protocol broker (kfake) on " + in.brokers[0]
	}
	in.describe = dbDesc + ", " + brokerDesc

	cfg, err := pgxpool.ParseConfig(in.dbURL)
	if err != nil {
		return nil, fmt.Errorf("database URL is not valid (%v); want e.g. postgres://user:pass@localhost:5432/db", err)
	}
	if cfg.MaxConns < 40 {
		cfg.MaxConns = 40
	}
	if in.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := in.pool.Ping(pctx); err != nil {
		return nil, fmt.Errorf("cannot reach %s: %w; check --database-url / DATABASE_URL and that PostgreSQL is running", redact(in.dbURL), err)
	}
	if in.svc, err = demo.NewServices(demo.Schemas{}); err != nil {
		return nil, err
	}
	if !setup {
		return in, nil
	}
	if err := migrations.Up(ctx, in.dbURL, c.schema); err != nil {
		return nil, err
	}
	if err := in.svc.Setup(ctx, in.pool); err != nil {
		return nil, err
	}
	if err := createTopics(ctx, in.brokers, topics); err != nil {
		return nil, err
	}
	return in, nil
}

// createTopics creates the demo's topics, leaving existing ones alone.
func createTopics(ctx context.Context, brokers, topics []string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// A transport of our own, closed at the end, so no idle connection outlives the call.
	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second, Transport: transport}
	req := &kafka.CreateTopicsRequest{}
	for _, t := range topics {
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: t, NumPartitions: 8, ReplicationFactor: 1})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("cannot create the demo's topics on %v: %w; check --brokers / KAFKA_BROKERS", brokers, err)
	}
	for t, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	return nil
}

// consumerConfig tunes the consumer loops. For the in-process broker (or with
// --fast-groups) heartbeats and join backoff are short, so the groups form in a
// second instead of several; the session stays at Kafka's 6 s minimum so that a
// loaded machine does not evict members and stall the demo in rebalances. The fetch
// wait is 250ms: a fetch returns as soon as a record arrives, and at 50ms
// kafka-go's client-side deadline (MaxWait, the broker answering an empty fetch
// after 3/4 of it) ran out on a loaded machine: 24-800 i/o timeouts and partition
// redials per 50-order run, none at 250ms. Concurrency is left to the participants'
// and the orchestrator's default of one worker: with 4 each, 1000 orders ran at
// 40-41 sagas/s (--concurrency 8) and 81 (64), with the default at 46-53 and 98-113.
func (in *infra) consumerConfig(c *config) consumer.Config {
	cc := consumer.Config{
		Brokers: in.brokers, Schema: c.schema, Logger: c.log,
		MaxWait: 250 * time.Millisecond, CommitInterval: 100 * time.Millisecond,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: time.Second,
	}
	if in.embedded {
		cc.SessionTimeout, cc.HeartbeatInterval = 6*time.Second, 300*time.Millisecond
		cc.RebalanceTimeout, cc.JoinGroupBackoff = 5*time.Second, 200*time.Millisecond
	}
	return cc
}

// newRelay returns the outbox relay of the demo, publishing every message twice
// when --duplicate-delivery asks for it.
func (in *infra) newRelay(c *config) (*relay.Relay, func(), error) {
	pub, err := kafkapub.New(kafkapub.Config{Brokers: in.brokers, ClientID: "orderdemo", Logger: c.log})
	if err != nil {
		return nil, nil, err
	}
	var p relay.Publisher = pub
	if c.duplicate {
		p = twice{pub}
	}
	r, err := relay.New(in.pool, p, relay.Config{Schema: c.schema, PollInterval: 100 * time.Millisecond, Logger: c.log})
	if err != nil {
		_ = pub.Close()
		return nil, nil, err
	}
	return r, func() { _ = pub.Close() }, nil
}

// twice publishes every batch two times: each consumer sees every message twice,
// which the inbox and the participants' barrier must absorb.
type twice struct{ relay.Publisher }

func (t twice) Publish(ctx context.Context, msgs []outbox.Message) error {
	if err := t.Publisher.Publish(ctx, msgs); err != nil {
		return err
	}
	return t.Publisher.Publish(ctx, msgs)
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "the database"
	}
	return u.Redacted()
}
