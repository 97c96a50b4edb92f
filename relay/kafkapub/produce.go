package kafkapub

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/createtopics"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/protocol/produce"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// maxRequestBytes bounds one produce request (a broker refuses requests above its
// socket.request.max.bytes, 100 MiB by default); a leader's partitions beyond it
// go in the next round. One partition batch larger than it is sent alone.
const maxRequestBytes = 16 << 20

// Backoff between the rounds of a send that retries a retriable error (leader
// moving, timeout), as kafka-go's Writer had it.
const (
	retryBackoffMin = 50 * time.Millisecond
	retryBackoffMax = 500 * time.Millisecond
)

// partition is one topic-partition of a send: its messages in batch order, cut
// into partition batches (record batches) of at most MaxMessageBytes, the
// broker's limit for one. Only the head batch is ever in flight, so a
// partition's messages reach the broker in order, one request at a time.
type partition struct {
	topic    string
	id       int32
	batches  [][]int // indexes into msgs; batches[0] is the next to send
	attempts int     // tries of batches[0] so far
	err      error   // batches[0]'s answer in the last round; nil if acknowledged
}

// answers are a write's outcomes per message (indexes into msgs), set as they
// come in: errNotSent until a message is settled. The Publish that started the
// write reads them when its deadline passes, so what a leader acknowledged by
// then is published even while another leader has not answered.
type answers struct {
	mu   sync.Mutex
	errs []error
	// gaveUp is closed when that Publish stopped waiting: the write starts no
	// new round then (the relay sends what is left again, once its lease allows).
	gaveUp <-chan struct{}
}

func newAnswers(n int, idx []int) *answers {
	a := &answers{errs: make([]error, n)}
	for _, i := range idx {
		a.errs[i] = errNotSent
	}
	return a
}

// set settles msgs[idx] with err.
func (a *answers) set(idx []int, err error) {
	a.mu.Lock()
	for _, i := range idx {
		a.errs[i] = err
	}
	a.mu.Unlock()
}

// send publishes msgs[idx] and settles them in a: each round sends every partition's
// head batch, in one produce request per leader broker carrying all of that
// leader's partitions, the leaders in parallel. Rounds repeat while partitions
// have batches left: the rest of a partition larger than a batch, a batch the
// broker refused as too large (its messages go again one by one), a retriable
// error (after a backoff, up to MaxAttempts tries). Once a message of a key
// fails, the key's later messages are held back, not sent.
func (p *Publisher) send(ctx context.Context, msgs []outbox.Message, idx []int, a *answers) {
	byTopic := map[string][]int{}
	var topics []string
	for _, i := range idx {
		t := msgs[i].Topic
		if _, ok := byTopic[t]; !ok {
			topics = append(topics, t)
		}
		byTopic[t] = append(byTopic[t], i)
	}
	leaders, err := p.leaders(ctx, topics)
	if err != nil {
		for _, t := range topics {
			a.set(byTopic[t], p.classify(t, err))
		}
		return
	}
	var failed []int
	for _, t := range topics {
		if l := leaders[t]; l.err != nil {
			a.set(byTopic[t], p.classify(t, l.err))
			failed = append(failed, byTopic[t]...)
		}
	}
	first := firstFailures(msgs, failed)
	var parts []*partition
	for _, t := range topics {
		if l := leaders[t]; l.err == nil {
			parts = append(parts, p.partitions(t, l.ids, msgs, heldBehind(msgs, byTopic[t], first, a))...)
		}
	}

	// What the rounds do not settle (the write's own deadline passed) keeps errNotSent.
	failedKeys := map[string]bool{}
	for {
		select {
		case <-a.gaveUp:
			return
		default:
		}
		var sending []*partition
		for _, pt := range parts {
			if pt.holdBack(msgs, a, failedKeys) {
				sending = append(sending, pt)
			}
		}
		if len(sending) == 0 {
			return
		}
		p.sendRound(ctx, msgs, sending, leaders, a)

		tries, moved := 0, false
		for _, pt := range sending {
			if pt.settle(p, msgs, a, failedKeys) {
				tries = max(tries, pt.attempts)
				moved = moved || leaderMoved(pt.err)
			}
		}
		if tries == 0 {
			continue
		}
		if !sleep(ctx, a.gaveUp, backoff(tries)) {
			return // what is not settled keeps errNotSent
		}
		if moved {
			p.refresh(ctx)
		}
		if l, err := p.leaders(ctx, topics); err == nil {
			leaders = l
		}
	}
}

// firstFailures returns, per key, the first of the messages failed (indexes
// into msgs) before anything was sent.
func firstFailures(msgs []outbox.Message, failed []int) map[string]int {
	var first map[string]int
	for _, i := range failed {
		if k := msgs[i].Key; k != "" {
			if first == nil {
				first = map[string]int{}
			}
			if j, ok := first[k]; !ok || i < j {
				first[k] = i
			}
		}
	}
	return first
}

// heldBehind settles as ErrHeldBack the messages of idx that come after a
// failed message of their key (first, from firstFailures) and returns the others.
func heldBehind(msgs []outbox.Message, idx []int, first map[string]int, a *answers) []int {
	if len(first) == 0 {
		return idx
	}
	var keep, held []int
	for _, i := range idx {
		if j, ok := first[msgs[i].Key]; ok && msgs[i].Key != "" && j < i {
			held = append(held, i)
			continue
		}
		keep = append(keep, i)
	}
	a.set(held, relay.ErrHeldBack)
	return keep
}

// partitions places the messages of topic (idx, in batch order) on its
// partitions, as kafka-go's Murmur2Balancer does, and cuts each partition's
// messages into partition batches. ids are the topic's partitions in ascending
// order (leaders sorts them): the balancer picks the n-th of them, hash mod the
// partition count, as the Writer did and the Java client does.
func (p *Publisher) partitions(topic string, ids []int32, msgs []outbox.Message, idx []int) []*partition {
	all := make([]int, len(ids))
	for j := range all {
		all[j] = j
	}
	var out []*partition
	byID := map[int]*partition{}
	size := map[int]int{}
	for _, i := range idx {
		var km kafka.Message
		if msgs[i].Key != "" {
			km.Key = []byte(msgs[i].Key)
		}
		n := p.balancer.Balance(km, all...)
		pt := byID[n]
		if pt == nil {
			pt = &partition{topic: topic, id: ids[n]}
			byID[n] = pt
			out = append(out, pt)
		}
		rs := outbox.RecordSize(&msgs[i])
		if last := len(pt.batches) - 1; last < 0 || size[n]+rs > p.cfg.MaxMessageBytes {
			pt.batches = append(pt.batches, nil)
			size[n] = 0
		}
		last := len(pt.batches) - 1
		pt.batches[last] = append(pt.batches[last], i)
		size[n] += rs
	}
	return out
}

// holdBack drops from the head batch the messages of keys that failed earlier
// (ErrHeldBack) and reports whether the partition has a batch to send.
func (pt *partition) holdBack(msgs []outbox.Message, a *answers, failedKeys map[string]bool) bool {
	for len(pt.batches) > 0 {
		head := pt.batches[0][:0]
		var held []int
		for _, i := range pt.batches[0] {
			if k := msgs[i].Key; k != "" && failedKeys[k] {
				held = append(held, i)
				continue
			}
			head = append(head, i)
		}
		a.set(held, relay.ErrHeldBack)
		if len(head) > 0 {
			pt.batches[0] = head
			return true
		}
		pt.batches, pt.attempts = pt.batches[1:], 0
	}
	return false
}

// settle takes the head batch's answer: acknowledged (produce settled it), refused as too large
// (split into single messages unless it is one), or failed; it reports whether
// the batch is to be tried again after a backoff (a retriable error, tries left).
func (pt *partition) settle(p *Publisher, msgs []outbox.Message, a *answers, failedKeys map[string]bool) bool {
	if pt.err == errDeferred {
		return false // not sent: no try spent, no backoff
	}
	head := pt.batches[0]
	pt.attempts++
	switch err := pt.err; {
	case err == nil:
		pt.batches, pt.attempts = pt.batches[1:], 0
	case len(head) > 1 && tooLarge(err):
		// The broker refuses a partition batch as a whole; find the culprit(s), one
		// message at a time, so its neighbours are published.
		single := make([][]int, len(head), len(head)+len(pt.batches)-1)
		for j, i := range head {
			single[j] = []int{i}
		}
		pt.batches, pt.attempts = append(single, pt.batches[1:]...), 0
	case retriable(err) && pt.attempts < p.cfg.MaxAttempts:
		return true
	default:
		a.set(head, p.classify(pt.topic, err))
		for _, i := range head { // their keys' later messages are held back
			if k := msgs[i].Key; k != "" {
				failedKeys[k] = true
			}
		}
		pt.batches, pt.attempts = pt.batches[1:], 0
	}
	return false
}

// sendRound sends the head batches of parts, one produce request per leader,
// and sets each partition's err from its answer.
func (p *Publisher) sendRound(ctx context.Context, msgs []outbox.Message, parts []*partition, leaders map[string]topicLeaders, a *answers) {
	type request struct {
		parts []*partition
		bytes int
	}
	var reqs []*request
	open := map[int32]*request{} // the request being filled per leader
	for _, pt := range parts {
		leader := leaders[pt.topic].leader(pt.id)
		n := 0
		for _, i := range pt.batches[0] {
			n += outbox.RecordSize(&msgs[i])
		}
		r := open[leader]
		if r != nil && r.bytes+n > p.maxRequestBytes {
			pt.err = errDeferred // its turn comes in the next round, no try spent
			continue
		}
		if r == nil {
			r = &request{}
			open[leader] = r
			reqs = append(reqs, r)
		}
		r.parts = append(r.parts, pt)
		r.bytes += n
	}
	if len(reqs) == 1 { // one leader: no goroutine needed
		p.produce(ctx, msgs, reqs[0].parts, a)
		return
	}
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Go(func() { p.produce(ctx, msgs, r.parts, a) })
	}
	wg.Wait()
}

// errNotSent is the error of a message a send did not get acknowledged before the
// write's own deadline (a broker slow or failing for (MaxAttempts+1)×WriteTimeout).
var errNotSent = fmt.Errorf("%w: not acknowledged before the write's deadline", relay.ErrUnavailable)

// errDeferred marks a partition batch left for the next round because its
// leader's request was full.
var errDeferred = errors.New("deferred to the next request")

// produce sends the head batches of parts (all of one leader) in one produce
// request and sets each partition's err; an acknowledged batch is settled in a at
// once, not when the round's slowest leader has answered.
func (p *Publisher) produce(ctx context.Context, msgs []outbox.Message, parts []*partition, a *answers) {
	// The broker waits at most half of WriteTimeout for the in-sync replicas, as
	// kafka-go's Writer asked: its REQUEST_TIMED_OUT then arrives before rctx ends.
	req := &produce.Request{Acks: int16(kafka.RequireAll), Timeout: int32(max(p.cfg.WriteTimeout/2/time.Millisecond, 1))}
	for _, pt := range parts {
		rp := produce.RequestPartition{Partition: pt.id, RecordSet: protocol.RecordSet{
			Records: &records{msgs: msgs, idx: pt.batches[0]},
		}}
		if n := len(req.Topics); n > 0 && req.Topics[n-1].Topic == pt.topic {
			req.Topics[n-1].Partitions = append(req.Topics[n-1].Partitions, rp)
		} else {
			req.Topics = append(req.Topics, produce.RequestTopic{Topic: pt.topic, Partitions: []produce.RequestPartition{rp}})
		}
		pt.err = nil
	}
	rctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
	defer cancel()
	m, err := p.transport.RoundTrip(rctx, p.addr, req)
	if err != nil {
		for _, pt := range parts {
			pt.err = err
		}
		return
	}
	answers := map[topicPartition]error{}
	for _, t := range m.(*produce.Response).Topics {
		for _, a := range t.Partitions {
			var err error
			if a.ErrorCode != 0 {
				err = kafka.Error(a.ErrorCode)
				if a.ErrorMessage != "" {
					err = fmt.Errorf("%w: %s", err, a.ErrorMessage)
				}
			}
			answers[topicPartition{t.Topic, a.Partition}] = err
		}
	}
	for _, pt := range parts {
		err, ok := answers[topicPartition{pt.topic, pt.id}]
		if !ok {
			err = fmt.Errorf("the broker's produce response has no answer for partition %d", pt.id)
		}
		pt.err = err
		if err == nil {
			a.set(pt.batches[0], nil)
		}
	}
}

type topicPartition struct {
	topic string
	id    int32
}

// topicLeaders is a topic's partition leaders (broker ids by partition), or the
// metadata's error for the topic.
type topicLeaders struct {
	ids     []int32
	leaders []int32
	err     error
}

func (l topicLeaders) leader(id int32) int32 {
	if int(id) < len(l.leaders) {
		return l.leaders[id]
	}
	return -1
}

// leaders looks up the partitions and their leaders of topics in the transport's
// metadata, the same the transport routes requests by (it caches it for
// metadataTTL). A topic the cache does not know triggers one refresh first (it
// may be new), unless a refresh found it missing within metadataTTL.
func (p *Publisher) leaders(ctx context.Context, topics []string) (map[string]topicLeaders, error) {
	for refreshed := false; ; refreshed = true {
		m, err := p.transport.RoundTrip(ctx, p.addr, &metadataAPI.Request{TopicNames: topics})
		if err != nil {
			return nil, err
		}
		out := make(map[string]topicLeaders, len(topics))
		var unknown []string
		for _, t := range m.(*metadataAPI.Response).Topics {
			var l topicLeaders
			if t.ErrorCode != 0 {
				l.err = kafka.Error(t.ErrorCode)
				if errors.Is(l.err, kafka.UnknownTopicOrPartition) {
					unknown = append(unknown, t.Name)
				}
			} else if len(t.Partitions) == 0 {
				l.err = kafka.LeaderNotAvailable
			}
			for _, tp := range t.Partitions {
				l.ids = append(l.ids, tp.PartitionIndex)
				for len(l.leaders) <= int(tp.PartitionIndex) {
					l.leaders = append(l.leaders, -1)
				}
				l.leaders[tp.PartitionIndex] = tp.LeaderID
			}
			slices.Sort(l.ids) // kafka-go's Transport sorts them too; partitions relies on it
			out[t.Name] = l
		}
		if refreshed {
			p.rememberMissing(unknown)
		}
		if refreshed || p.knownMissing(unknown) {
			return out, nil
		}
		p.refresh(ctx)
	}
}

// maxMissingTopics bounds the topics remembered as missing.
const maxMissingTopics = 1024

// rememberMissing notes topics a refresh did not find, so that publishing to
// them again (the relay retries their rows) forces no refresh within metadataTTL;
// after it, the transport's own fetch would have shown them.
func (p *Publisher) rememberMissing(topics []string) {
	if len(topics) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for _, t := range topics {
		if len(p.missing) >= maxMissingTopics {
			for t, at := range p.missing {
				if now.Sub(at) >= metadataTTL {
					delete(p.missing, t)
				}
			}
			if len(p.missing) >= maxMissingTopics {
				return
			}
		}
		p.missing[t] = now
	}
}

// knownMissing reports whether a refresh found each of topics missing within
// metadataTTL.
func (p *Publisher) knownMissing(topics []string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range topics {
		if at, ok := p.missing[t]; !ok || time.Since(at) >= metadataTTL {
			return false
		}
	}
	return true
}

// refresh makes the transport fetch the cluster's metadata now rather than at its
// next MetadataTTL tick, and waits for it: after a leader moved, or for a topic
// it does not know yet. kafka-go's Transport has no call for it, but refreshes
// after every CreateTopics answer; one with no topics creates nothing.
func (p *Publisher) refresh(ctx context.Context) {
	p.refreshMu.Lock() // concurrent sends that saw the same move refresh once
	defer p.refreshMu.Unlock()
	if time.Since(p.refreshed) < minRefreshInterval {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := p.transport.RoundTrip(ctx, p.addr, &createtopics.Request{}); err != nil {
		p.cfg.Logger.Debug("kafkapub: metadata refresh", "err", err)
	}
	p.refreshed = time.Now()
}

// minRefreshInterval spaces forced metadata refreshes.
const minRefreshInterval = 20 * time.Millisecond

// leaderMoved reports an error after which the metadata is worth refreshing: the
// broker says it no longer leads, or there was no answer at all (connection
// refused or dropped, timeout: the broker may be gone, its partitions moved).
func leaderMoved(err error) bool {
	var perr *produce.Error
	var kerr kafka.Error
	switch {
	case errors.As(err, &perr):
		return true
	case !errors.As(err, &kerr):
		return !errors.Is(err, context.Canceled)
	}
	return errors.Is(err, kafka.NotLeaderForPartition) || errors.Is(err, kafka.LeaderNotAvailable) ||
		errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.FencedLeaderEpoch) || errors.Is(err, kafka.UnknownLeaderEpoch) ||
		errors.Is(err, kafka.BrokerNotAvailable)
}

// retriable reports an error worth another try: a retriable broker error, or no
// answer at all (network, timeout, no leader known).
func retriable(err error) bool {
	var kerr kafka.Error
	if errors.As(err, &kerr) {
		return kerr.Temporary() || kerr == kafka.BrokerNotAvailable
	}
	return !errors.Is(err, context.Canceled) && !isAuth(err)
}

func tooLarge(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge)
}

// backoff is the pause before the try after try n (1, 2, ...), as kafka-go's Writer.
func backoff(n int) time.Duration {
	return min(time.Duration(n*n)*retryBackoffMin, retryBackoffMax)
}

func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-stop:
		return false
	}
}

// records reads outbox messages as Kafka records for one partition batch: the
// message-id header first, then the message's headers sorted by name (so a
// record's bytes do not depend on map order). Its buffers are reused from
// record to record: the encoder copies each before asking for the next.
type records struct {
	msgs       []outbox.Message
	idx        []int
	next       int
	rec        protocol.Record
	key, value bytesReadCloser
	headers    []protocol.Header
	names      []string
	id         [36]byte
}

func (r *records) ReadRecord() (*protocol.Record, error) {
	if r.next >= len(r.idx) {
		return nil, io.EOF
	}
	m := &r.msgs[r.idx[r.next]]
	r.next++
	r.rec = protocol.Record{}
	if m.Key != "" {
		r.key.Reset([]byte(m.Key))
		r.rec.Key = &r.key
	}
	if m.Payload != nil {
		r.value.Reset(m.Payload)
		r.rec.Value = &r.value
	}
	r.names = r.names[:0]
	for k := range m.Headers {
		r.names = append(r.names, k)
	}
	slices.Sort(r.names)
	encodeUUID(r.id[:], m.ID)
	r.headers = append(r.headers[:0], protocol.Header{Key: outbox.HeaderMessageID, Value: r.id[:]})
	for _, k := range r.names {
		r.headers = append(r.headers, protocol.Header{Key: k, Value: []byte(m.Headers[k])})
	}
	r.rec.Headers = r.headers
	return &r.rec, nil
}

type bytesReadCloser struct{ bytes.Reader }

func (*bytesReadCloser) Close() error { return nil }

// encodeUUID writes u's canonical text form (36 bytes) into dst.
func encodeUUID(dst []byte, u uuid.UUID) {
	hex.Encode(dst[0:8], u[0:4])
	dst[8] = '-'
	hex.Encode(dst[9:13], u[4:6])
	dst[13] = '-'
	hex.Encode(dst[14:18], u[6:8])
	dst[18] = '-'
	hex.Encode(dst[19:23], u[8:10])
	dst[23] = '-'
	hex.Encode(dst[24:], u[10:])
}
