package kafkapub_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// produceLog records the produce requests a kfake cluster gets: per request, the
// broker and its topic-partitions.
type produceLog struct {
	mu   sync.Mutex
	reqs []string
}

func watchProduce(c *kfake.Cluster) *produceLog {
	l := &produceLog{}
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		var parts []string
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range t.Partitions {
				parts = append(parts, fmt.Sprintf("%s/%d", t.Topic, p.Partition))
			}
		}
		l.mu.Lock()
		l.reqs = append(l.reqs, fmt.Sprintf("node %d: %s", c.CurrentNode(), strings.Join(parts, " ")))
		l.mu.Unlock()
		return nil, nil, false
	})
	return l
}

// produceError answers every partition of req with the error code.
func produceError(req *kmsg.ProduceRequest, code int16) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic = rt.Topic
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

func (l *produceLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.reqs
	l.reqs = nil
	return r
}

func twoBrokers(t *testing.T, partitions int32, topics ...string) *kfake.Cluster {
	t.Helper()
	return brokers(t, 2, partitions, topics...)
}

func brokers(t *testing.T, n int, partitions int32, topics ...string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(n), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// keyed returns n messages of topic over keys k0..k(keys-1), values in order
// (padded to pad bytes).
func keyed(topic string, n, keys, pad int) []outbox.Message {
	var msgs []outbox.Message
	for i := range n {
		v := fmt.Sprintf("%04d", i)
		msgs = append(msgs, msg(topic, fmt.Sprintf("k%d", i%keys), v+strings.Repeat(".", max(0, pad-len(v)))))
	}
	return msgs
}

// checkKeyOrder fails unless each key's records hold increasing values.
func checkKeyOrder(t *testing.T, brokers []string, topic string, want int) {
	t.Helper()
	last := map[string]string{}
	for _, r := range readAll(t, brokers, topic, want) {
		if prev := last[string(r.Key)]; string(r.Value) <= prev {
			t.Fatalf("key %s: %q after %q", r.Key, r.Value, prev)
		}
		last[string(r.Key)] = string(r.Value)
	}
}

// TestOneProduceRequestPerLeaderBroker: a batch over two topics and sixteen
// partitions led by two brokers goes out as two produce requests, one per
// leader with all of its partitions, not one per partition.
func TestOneProduceRequestPerLeaderBroker(t *testing.T) {
	t.Parallel()
	c := twoBrokers(t, 8, "one-a", "one-b")
	log := watchProduce(c)
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	msgs := append(keyed("one-a", 200, 40, 0), keyed("one-b", 200, 40, 0)...)
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	if reqs := log.take(); len(reqs) != 2 {
		t.Fatalf("%d produce requests, want 2 (one per leader):\n%s", len(reqs), strings.Join(reqs, "\n"))
	}
	checkKeyOrder(t, c.ListenAddrs(), "one-a", 200)
	checkKeyOrder(t, c.ListenAddrs(), "one-b", 200)
}

// TestLeaderMovedMidBatch: a partition's leader moves after the publisher cached
// the metadata. The old leader refuses that partition (NOT_LEADER_FOR_PARTITION)
// while the request's other partitions land; the publisher refreshes the
// metadata and sends the partition to its new leader within the same Publish.
// Should the transport's own metadata refresh (every 2 s) see the move before the
// Publish does, the Publish finds the new leader at once and proves nothing: the
// partition is moved again and the Publish repeated, up to 5 times.
func TestLeaderMovedMidBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := twoBrokers(t, 4, "moved")
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	const tries, per = 5, 90
	msgs := keyed("moved", 40+tries*per, 10, 0)
	if err := p.Publish(ctx, msgs[:40]); err != nil {
		t.Fatal(err)
	}
	log := watchProduce(c)
	published := 40
	for try := range tries {
		from := c.LeaderFor("moved", 1)
		if err := c.MoveTopicPartition("moved", 1, 1-from); err != nil {
			t.Fatal(err)
		}
		log.take()
		batch := msgs[40+try*per : 40+(try+1)*per]
		if err := p.Publish(ctx, batch); err != nil {
			t.Fatalf("publish across a leader move: %v", err)
		}
		published += len(batch)
		var sent []int32
		for _, r := range log.take() {
			if strings.Contains(r+" ", " moved/1 ") {
				var node int32
				fmt.Sscanf(r, "node %d:", &node)
				sent = append(sent, node)
			}
		}
		if len(sent) == 1 && sent[0] == 1-from && try < tries-1 {
			continue // the metadata had been refreshed already; move it again
		}
		// Refused by the old leader (more than once if a refresh had just been
		// done and the forced one was spaced out), then sent to the new one.
		ok := len(sent) >= 2 && len(sent) <= 3 && sent[len(sent)-1] == 1-from
		for _, n := range sent[:max(len(sent)-1, 0)] {
			ok = ok && n == from
		}
		if !ok {
			t.Fatalf("partition 1 went to nodes %v; want its old leader %d (refused), then its new one", sent, from)
		}
		break
	}
	checkKeyOrder(t, c.ListenAddrs(), "moved", published)
}

// TestFailedPartitionBatchHoldsBackItsKeysLaterMessages: the broker refuses one
// partition batch of a multi-partition request. Only that batch's messages fail;
// the other partitions land; the later messages of the refused keys are held
// back, not sent after their predecessors failed, while the partition's other
// keys flow. (Through kafka-go's Writer a partition's later batches went out
// regardless: k4's message 28 landed after its message 4 had failed.)
func TestFailedPartitionBatchHoldsBackItsKeysLaterMessages(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 2, "refused")
	// Partition batches of two messages here, of a dozen in kafka-go's Writer
	// (BatchBytes was MaxMessageBytes+4 KiB): a partition needs several either way.
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs(), MaxMessageBytes: 1000})
	if err := p.Publish(context.Background(), []outbox.Message{msg("refused", "warm", "up")}); err != nil {
		t.Fatal(err)
	}
	msgs := keyed("refused", 40, 8, 300)
	part := map[string]int{}
	for _, m := range msgs {
		part[m.Key] = kafka.Murmur2Balancer{}.Balance(kafka.Message{Key: []byte(m.Key)}, 0, 1)
	}
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "refused", Partitions: []int32{0}, Err: kerr.InvalidRecord, Count: 1})

	err := p.Publish(context.Background(), msgs)
	var me relay.MessageErrors
	if !errors.As(err, &me) || len(me) != len(msgs) {
		t.Fatalf("err = %v, want MessageErrors for %d messages", err, len(msgs))
	}
	failed := map[string]bool{}
	landed, heldBack := 1, 0 // the warm-up landed
	for i, e := range me {
		key := msgs[i].Key
		switch {
		case part[key] == 1:
			if e != nil {
				t.Fatalf("message %d (%s, partition 1): %v; want it published", i, key, e)
			}
			landed++
		case failed[key] && e == nil:
			t.Fatalf("message %d (%s) landed after an earlier message of its key failed", i, key)
		case failed[key]:
			if errors.Is(e, relay.ErrHeldBack) {
				heldBack++
			}
		case e == nil:
			landed++
		case errors.Is(e, kafkapub.ErrMessageTooLarge) || errors.Is(e, relay.ErrUnavailable) || !strings.Contains(e.Error(), "refused"):
			t.Fatalf("message %d (%s): %v; want the broker's refusal naming the topic", i, key, e)
		default:
			failed[key] = true
		}
	}
	if len(failed) == 0 || heldBack == 0 || landed == len(msgs)+1 {
		t.Fatalf("failed keys %v, %d held back, %d landed: want the refused batch's keys failed and their later messages held back", failed, heldBack, landed)
	}
	checkKeyOrder(t, c.ListenAddrs(), "refused", landed)
}

// TestRetriablePartitionErrorFailsOnlyItsMessages: one partition keeps answering
// NOT_ENOUGH_REPLICAS. After MaxAttempts tries its messages fail as
// ErrUnavailable (no attempt spent), the request's other partitions land once.
func TestRetriablePartitionErrorFailsOnlyItsMessages(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 4, "isr")
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	h := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "isr", Partitions: []int32{2}, Err: kerr.NotEnoughReplicas, Count: -1})
	msgs := keyed("isr", 80, 16, 0)
	err := p.Publish(context.Background(), msgs)
	h.Remove()
	var me relay.MessageErrors
	if !errors.As(err, &me) {
		t.Fatalf("err = %v, want MessageErrors", err)
	}
	landed := 0
	for i, e := range me {
		switch {
		case e == nil:
			landed++
		case !errors.Is(e, relay.ErrUnavailable) || errors.Is(e, relay.ErrHeldBack):
			t.Fatalf("message %d: %v; want ErrUnavailable", i, e)
		}
	}
	if landed == 0 || landed == len(msgs) {
		t.Fatalf("%d of %d landed; want all but partition 2's", landed, len(msgs))
	}
	if h.Hits() != 3 {
		t.Fatalf("partition 2 tried %d times, want MaxAttempts (3)", h.Hits())
	}
	checkKeyOrder(t, c.ListenAddrs(), "isr", landed)
}

// TestFullRequestLeavesPartitionsForTheNextRound: a leader's request reaches its
// byte bound; the partitions that did not fit go in the next round's request,
// each partition still in order and once.
func TestFullRequestLeavesPartitionsForTheNextRound(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 8, "full")
	log := watchProduce(c)
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs(), MaxMessageBytes: 4000})
	kafkapub.SetMaxRequestBytes(p, 6000)
	msgs := keyed("full", 160, 32, 100)
	if err := p.Publish(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	if reqs := log.take(); len(reqs) < 6 { // 2 without the bound: 8 partitions of two record batches
		t.Fatalf("%d produce requests for about 32 KB under a 6 KB bound: %q", len(reqs), reqs)
	}
	checkKeyOrder(t, c.ListenAddrs(), "full", 160)
}

// TestBrokerTimeoutLeavesRoomForRequestTimedOut: the produce request tells the
// broker to wait at most half of WriteTimeout for the in-sync replicas, as
// kafka-go's Writer did, so its REQUEST_TIMED_OUT answer arrives before the
// client's own deadline (WriteTimeout) closes the connection and the batch is
// sent again blind. It asked for all of WriteTimeout, the client's deadline.
func TestBrokerTimeoutLeavesRoomForRequestTimedOut(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 1, "acktimeout")
	var mu sync.Mutex
	var got []int32
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		mu.Lock()
		got = append(got, r.(*kmsg.ProduceRequest).TimeoutMillis)
		mu.Unlock()
		return nil, nil, false
	})
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs(), WriteTimeout: 10 * time.Second})
	if err := p.Publish(context.Background(), []outbox.Message{msg("acktimeout", "k", "v")}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] <= 0 || got[0] > 5000 {
		t.Fatalf("produce request timeouts %v ms; want one of at most half of WriteTimeout (10 s)", got)
	}
}

// TestMissingTopicDoesNotRefreshMetadataEveryPublish: a topic the cluster lacks
// is looked for with a forced metadata refresh (a CreateTopics request to the
// controller and a full Metadata fetch) once per metadata TTL, not on every
// Publish, which a relay repeats for every retry of the topic's rows.
func TestMissingTopicDoesNotRefreshMetadataEveryPublish(t *testing.T) {
	t.Parallel()
	c := brokers(t, 1, 1, "present")
	var creates atomic.Int32
	c.ControlKey(int16(kmsg.CreateTopics), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		creates.Add(1)
		return nil, nil, false
	})
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	if err := p.Publish(context.Background(), []outbox.Message{msg("present", "k", "v")}); err != nil {
		t.Fatal(err)
	}
	creates.Store(0)
	const n = 20
	for range n {
		err := p.Publish(context.Background(), []outbox.Message{msg("missing", "k", "v"), msg("present", "k2", "v")})
		var me relay.MessageErrors
		if !errors.As(err, &me) || !errors.Is(me[0], kafkapub.ErrTopicMissing) || me[1] != nil {
			t.Fatalf("err = %v; want the missing topic's message to fail as ErrTopicMissing, the other published", err)
		}
		time.Sleep(25 * time.Millisecond) // past the spacing of forced refreshes (20 ms)
	}
	if got := creates.Load(); got > n/4 {
		t.Fatalf("%d forced metadata refreshes (CreateTopics requests) for %d publishes to a missing topic", got, n)
	}
	// Created meanwhile, the topic is found once the remembered absence expires.
	admin := &kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...)}
	if _, err := admin.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: "missing", NumPartitions: 1, ReplicationFactor: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		err := p.Publish(context.Background(), []outbox.Message{msg("missing", "k", "v")})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish to the topic created 15 s ago: %v", err)
		}
	}
}

// TestTopicFailureHoldsBackItsKeysLaterMessages: a key's message fails before
// anything is sent (its topic is missing, or creating it failed); the key's
// later messages on other topics are held back (ErrHeldBack), its earlier one
// and other keys are published. They were sent after the failure, out of order.
func TestTopicFailureHoldsBackItsKeysLaterMessages(t *testing.T) {
	t.Parallel()
	for _, create := range []bool{false, true} {
		t.Run(fmt.Sprintf("CreateTopics=%v", create), func(t *testing.T) {
			t.Parallel()
			c := brokers(t, 1, 1, "present")
			c.ControlKey(int16(kmsg.CreateTopics), func(r kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				req := r.(*kmsg.CreateTopicsRequest)
				if len(req.Topics) != 1 || req.Topics[0].Topic != "missing" {
					return nil, nil, false
				}
				resp := req.ResponseKind().(*kmsg.CreateTopicsResponse)
				st := kmsg.NewCreateTopicsResponseTopic()
				st.Topic, st.ErrorCode = "missing", kerr.PolicyViolation.Code
				resp.Topics = append(resp.Topics, st)
				return resp, nil, true
			})
			p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs(), CreateTopics: create})
			msgs := []outbox.Message{msg("present", "K", "0"), msg("missing", "K", "1"), msg("present", "K", "2"), msg("present", "J", "0")}
			err := p.Publish(context.Background(), msgs)
			var me relay.MessageErrors
			if !errors.As(err, &me) {
				t.Fatalf("err = %v, want MessageErrors", err)
			}
			if me[0] != nil || me[1] == nil || errors.Is(me[1], relay.ErrHeldBack) || !errors.Is(me[2], relay.ErrHeldBack) || me[3] != nil {
				t.Fatalf("K#0: %v; K#1 (topic missing): %v; K#2: %v; J: %v; want K#2 held back, K#0 and J published", me[0], me[1], me[2], me[3])
			}
			readAll(t, c.ListenAddrs(), "present", 2)
		})
	}
}

// TestLeaderUnreachableRefreshesMetadata: a partition's leader moved and its old
// leader drops the connection instead of answering (a broker going down). The
// publisher refreshes the metadata after the network error, as after
// NOT_LEADER_FOR_PARTITION, and sends the partition to its new leader within the
// Publish; it retried the old leader from the stale cache until its attempts ran
// out, and the partition's messages failed.
func TestLeaderUnreachableRefreshesMetadata(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := twoBrokers(t, 4, "unreachable")
	p := newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()})
	msgs := keyed("unreachable", 200, 10, 0)
	if err := p.Publish(ctx, msgs[:40]); err != nil {
		t.Fatal(err)
	}
	from := c.LeaderFor("unreachable", 1)
	if err := c.MoveTopicPartition("unreachable", 1, 1-from); err != nil {
		t.Fatal(err)
	}
	var dropped atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if c.CurrentNode() != from {
			return nil, nil, false
		}
		for _, rt := range r.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == "unreachable" && rp.Partition == 1 {
					dropped.Add(1)
					return nil, errors.New("broker going down"), true // closes the connection
				}
			}
		}
		return nil, nil, false
	})
	if err := p.Publish(ctx, msgs[40:]); err != nil {
		t.Fatalf("publish with partition 1's old leader dropping the connection (%d times): %v", dropped.Load(), err)
	}
	checkKeyOrder(t, c.ListenAddrs(), "unreachable", 200)
}
