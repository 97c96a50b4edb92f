//go:build integration

package integration

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestContainersServeSagabox proves the images fit the suite: the PostgreSQL container
// accepts the configured user and database and takes every migration, and the broker
// container advertises an address clients on the host reach (produce, then read back).
func TestContainersServeSagabox(t *testing.T) {
	t.Parallel()
	pg := startPostgres(t)
	b := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var user, db string
	var applied int
	if err := pg.Pool.QueryRow(ctx, `SELECT current_user, current_database(),
		(SELECT count(*) FROM "sagabox"."goose_db_version" WHERE "version_id" > 0 AND "is_applied")`).Scan(&user, &db, &applied); err != nil {
		t.Fatalf("query the migrated database: %v", err)
	}
	if user != "sagabox" || db != "sagabox" || applied == 0 {
		t.Fatalf("connected as %s to %s with %d migrations applied; want sagabox, sagabox, at least 1", user, db, applied)
	}

	topic := "it.smoke"
	b.CreateTopic(t, topic, 1)
	w := &kafka.Writer{Addr: kafka.TCP(b.Addr), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("k"), Value: []byte("v"), Headers: []kafka.Header{{Key: "h", Value: []byte("x")}}}); err != nil {
		t.Fatalf("produce to the broker container: %v", err)
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: b.Brokers(), Topic: topic, Partition: 0, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	m, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("read back from the broker container: %v", err)
	}
	if string(m.Key) != "k" || string(m.Value) != "v" || len(m.Headers) != 1 || string(m.Headers[0].Value) != "x" {
		t.Fatalf("read back %q=%q headers %v; want k=v with header h=x", m.Key, m.Value, m.Headers)
	}
}
