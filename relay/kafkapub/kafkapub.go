package kafkapub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
)

// Errors of this package, wrapped with detail.
var (
	// ErrInvalidConfig means a Config field is missing or out of range.
	ErrInvalidConfig = errors.New("invalid kafka publisher config")
	// ErrMessageTooLarge means a message exceeds Config.MaxMessageBytes or the
	// broker's limit for its topic.
	ErrMessageTooLarge = errors.New("message too large for the broker")
	// ErrTopicMissing means the topic does not exist and CreateTopics is off.
	ErrTopicMissing = errors.New("topic does not exist")
	// ErrBrokerAuth means the broker refused the relay's credentials (SASL) or
	// its rights (authorization). It always comes with relay.ErrUnavailable: it is
	// the deployment's fault, no message's, so it spends no attempt.
	ErrBrokerAuth = errors.New("broker refused the relay's credentials or rights")
)

// WriteTimeoutDefault is Config.WriteTimeout's default.
const WriteTimeoutDefault = 10 * time.Second

// Config configures a Publisher.
type Config struct {
	// Brokers are the bootstrap addresses (host:port). Required.
	Brokers []string
	// ClientID names the client to the brokers. Defaults to "sagabox-relay".
	ClientID string
	// TLS enables TLS with this configuration. Defaults to nil (plaintext).
	TLS *tls.Config
	// SASL authenticates with this mechanism (kafka-go's sasl/plain or
	// sasl/scram). Defaults to nil (no authentication).
	SASL sasl.Mechanism
	// MaxMessageBytes refuses larger messages (outbox.RecordSize: key, value,
	// headers and overhead, as Enqueue counts them) before sending; set it to the
	// broker's message.max.bytes, and outbox.Config.MaxMessageBytes to the same.
	// Defaults to outbox.DefaultMaxMessageBytes (1 MiB).
	MaxMessageBytes int
	// BatchTimeout is how long kafka-go waits to fill a partition batch before
	// sending it. Defaults to 10µs, next to no wait: the relay hands over whole
	// batches already, and kafka-go puts the messages of one call for one partition
	// into one batch however short the timeout. The 1ms it was cost every hop of a
	// saga a millisecond (publish p50 1.7ms → 0.5ms, BenchmarkHopLatency).
	BatchTimeout time.Duration
	// WriteTimeout bounds one produce request. Keep it at least the relay's
	// PublishTimeout (outbox-relay does): a shorter one makes kafka-go resend a batch
	// the broker may still be writing. Defaults to 10s.
	WriteTimeout time.Duration
	// MaxAttempts is how often kafka-go itself tries a produce request before
	// reporting failure to the relay. Defaults to 3.
	MaxAttempts int
	// CreateTopics creates a missing topic before the first publish to it.
	// Defaults to false: a missing topic is an error.
	CreateTopics bool
	// TopicPartitions is the partition count of created topics. Defaults to -1
	// (the broker's num.partitions).
	TopicPartitions int
	// ReplicationFactor of created topics. Defaults to -1 (the broker's
	// default.replication.factor).
	ReplicationFactor int
	// Logger receives operational messages. Defaults to discarding them.
	Logger *slog.Logger
}

func (c *Config) applyDefaults() {
	if c.ClientID == "" {
		c.ClientID = "sagabox-relay"
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = outbox.DefaultMaxMessageBytes
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = 10 * time.Microsecond
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = WriteTimeoutDefault
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.TopicPartitions == 0 {
		c.TopicPartitions = -1
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = -1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...))
	}
	if len(c.Brokers) == 0 {
		bad("Brokers is empty; give at least one host:port (KAFKA_BROKERS)")
	}
	for _, b := range c.Brokers {
		if b == "" {
			bad("Brokers contains an empty address")
		}
	}
	if c.MaxMessageBytes < 0 {
		bad("MaxMessageBytes is %d; it must be positive", c.MaxMessageBytes)
	}
	if c.BatchTimeout < 0 || c.WriteTimeout < 0 {
		bad("BatchTimeout and WriteTimeout must be positive")
	}
	if c.MaxAttempts < 0 {
		bad("MaxAttempts is %d; it must be positive", c.MaxAttempts)
	}
	if c.TopicPartitions < -1 || c.ReplicationFactor < -1 {
		bad("TopicPartitions (%d) and ReplicationFactor (%d) must be positive, or -1 for the broker's default", c.TopicPartitions, c.ReplicationFactor)
	}
	if !c.CreateTopics && (c.TopicPartitions > 0 || c.ReplicationFactor > 0) {
		bad("TopicPartitions and ReplicationFactor apply only with CreateTopics")
	}
	return errors.Join(errs...)
}

// Publisher implements relay.Publisher with kafka-go Writers, one per write in
// progress: a Writer sends one produce request per partition at a time, so
// concurrent Publish calls (the relay's publish loops) sharing one would queue
// behind each other's round trips to the broker.
type Publisher struct {
	cfg       Config
	transport *kafka.Transport
	newWriter func() *kafka.Writer
	slots     chan struct{} // one per Writer in use or idle: at most maxWriters
	client    *kafka.Client

	writersMu sync.Mutex
	writers   []*kafka.Writer // every Writer made, for Close
	idle      []*kafka.Writer

	mu        sync.Mutex
	created   map[string]bool
	inflight  map[uuid.UUID]flying // messages of writes that outlived their Publish
	brokerErr error                // the last Publish's failure of the broker as a whole, nil after a success
	probed    time.Time            // when Health last asked the broker
	probeErr  error
}

// flight is one kafka-go write of one topic. A write is never cancelled: kafka-go
// would keep its batches queued and send them anyway. When the Publish that
// started it returns first (its deadline passed), the write's messages stay in
// Publisher.inflight; the next Publish of such a message waits for the write's
// outcome instead of sending another copy, and takes a late acknowledgement as
// its own.
type flight struct {
	done  chan struct{}
	errs  []error   // per message of idx, set before done is closed
	ended time.Time // when done was closed; under Publisher.mu
}

// flying locates a message in a flight.
type flying struct {
	f *flight
	j int
}

// flightTTL is how long the outcome of a write nobody asked about is kept.
const flightTTL = time.Minute

var _ relay.Publisher = (*Publisher)(nil)

// New returns a Publisher; it connects lazily, on the first Publish.
func New(cfg Config) (*Publisher, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("kafkapub: %w", err)
	}
	transport := &kafka.Transport{
		ClientID:    cfg.ClientID,
		TLS:         cfg.TLS,
		SASL:        cfg.SASL,
		DialTimeout: 5 * time.Second,
		MetadataTTL: 2 * time.Second,
	}
	addr := kafka.TCP(cfg.Brokers...)
	newWriter := func() *kafka.Writer {
		return &kafka.Writer{
			Addr:            addr,
			Balancer:        &kafka.Murmur2Balancer{},
			RequiredAcks:    kafka.RequireAll,
			MaxAttempts:     cfg.MaxAttempts,
			WriteBackoffMin: 50 * time.Millisecond,
			WriteBackoffMax: 500 * time.Millisecond,
			// kafka-go allocates BatchSize messages for every partition batch: keep it near
			// what one relay batch puts on one partition, not at the 10000 rows it could.
			BatchSize:    1000,
			BatchBytes:   int64(cfg.MaxMessageBytes) + 4096,
			BatchTimeout: cfg.BatchTimeout,
			ReadTimeout:  cfg.WriteTimeout,
			WriteTimeout: cfg.WriteTimeout,
			Transport:    transport,
		}
	}
	return &Publisher{
		cfg: cfg, transport: transport, newWriter: newWriter, slots: make(chan struct{}, maxWriters),
		client:  &kafka.Client{Addr: addr, Transport: transport, Timeout: cfg.WriteTimeout},
		created: map[string]bool{}, inflight: map[uuid.UUID]flying{},
	}, nil
}

// maxWriters bounds the Writers of a Publisher: one per publish loop is what the
// relay needs, more are writes that outlived their Publish (a slow broker).
const maxWriters = 16

// writer returns an idle Writer, or a new one, waiting while maxWriters are busy.
func (p *Publisher) writer(ctx context.Context) (*kafka.Writer, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %d writes to the broker still running: %w", relay.ErrUnavailable, maxWriters, ctx.Err())
	}
	p.writersMu.Lock()
	defer p.writersMu.Unlock()
	if n := len(p.idle); n > 0 {
		w := p.idle[n-1]
		p.idle = p.idle[:n-1]
		return w, nil
	}
	w := p.newWriter()
	p.writers = append(p.writers, w)
	return w, nil
}

func (p *Publisher) putWriter(w *kafka.Writer) {
	p.writersMu.Lock()
	p.idle = append(p.idle, w)
	p.writersMu.Unlock()
	<-p.slots
}

// Close flushes and closes the writers.
func (p *Publisher) Close() error {
	p.writersMu.Lock()
	ws := p.writers
	p.writers, p.idle = nil, nil
	p.writersMu.Unlock()
	var errs []error
	for _, w := range ws {
		errs = append(errs, w.Close())
	}
	p.transport.CloseIdleConnections()
	return errors.Join(errs...)
}

// Publish sends msgs, one kafka-go call per topic, and classifies failures (see
// the package documentation).
func (p *Publisher) Publish(ctx context.Context, msgs []outbox.Message) error {
	errs := make([]error, len(msgs))
	byTopic := map[string][]int{}
	var topics []string
	failedKeys := map[string]bool{}
	p.sweep()
	for i := range msgs {
		if key := msgs[i].Key; key != "" && failedKeys[key] {
			errs[i] = relay.ErrHeldBack
			continue
		}
		if late, ok := p.landed(ctx, msgs[i].ID); ok {
			// An earlier Publish of this message left its write in flight: its
			// outcome, once known, is this message's; it is never sent twice at once.
			if late == nil {
				continue // acknowledged after that Publish had given up
			}
			if errors.Is(late, errInFlight) {
				errs[i] = late
				if msgs[i].Key != "" {
					failedKeys[msgs[i].Key] = true
				}
				continue
			}
		}
		if size := outbox.RecordSize(&msgs[i]); size > p.cfg.MaxMessageBytes {
			errs[i] = fmt.Errorf("%w: %w: %d bytes exceeds MaxMessageBytes %d; it will never be published as is",
				relay.ErrPermanent, ErrMessageTooLarge, size, p.cfg.MaxMessageBytes)
			if msgs[i].Key != "" {
				failedKeys[msgs[i].Key] = true
			}
			continue
		}
		t := msgs[i].Topic
		if _, ok := byTopic[t]; !ok {
			topics = append(topics, t)
		}
		byTopic[t] = append(byTopic[t], i)
	}
	var wg sync.WaitGroup
	for _, topic := range topics {
		wg.Go(func() { p.publishTopic(ctx, topic, msgs, byTopic[topic], errs) })
	}
	wg.Wait()

	failed, unavailable := 0, 0
	var firstUnavailable error
	for _, err := range errs {
		if err != nil {
			failed++
			if errors.Is(err, relay.ErrUnavailable) || errors.Is(err, relay.ErrHeldBack) {
				unavailable++
				if firstUnavailable == nil {
					firstUnavailable = err
				}
			}
		}
	}
	switch {
	case failed == 0:
		p.setBrokerErr(nil)
		return nil
	case unavailable == len(msgs) && firstUnavailable != nil && errors.Is(firstUnavailable, relay.ErrUnavailable):
		err := fmt.Errorf("kafkapub: %w", firstUnavailable)
		p.setBrokerErr(err)
		return err
	default:
		if failed < len(msgs) {
			p.setBrokerErr(nil)
		}
		return relay.MessageErrors(errs)
	}
}

func (p *Publisher) setBrokerErr(err error) {
	p.mu.Lock()
	p.brokerErr = err
	p.mu.Unlock()
}

// healthProbeEvery spaces Health's requests to the broker.
const healthProbeEvery = 2 * time.Second

// Health returns nil while the broker takes the relay's writes: the last Publish
// did not fail as a whole (unreachable, refused credentials or rights: its error
// is returned then), and the brokers answered a metadata request in the last
// healthProbeEvery, so an idle relay reports a broker outage too.
func (p *Publisher) Health(ctx context.Context) error {
	p.mu.Lock()
	err, probed := p.brokerErr, p.probed
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if time.Since(probed) < healthProbeEvery {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.probeErr
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}})
	if err != nil {
		err = fmt.Errorf("kafkapub: brokers %s do not answer: %w", strings.Join(p.cfg.Brokers, ","), err)
		if isAuth(err) {
			err = fmt.Errorf("%w: %w", ErrBrokerAuth, err)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probed, p.probeErr = time.Now(), err
	return err
}

// errInFlight is the error of a message whose earlier write has not ended.
var errInFlight = fmt.Errorf("%w: an earlier publish of this message still waits for the broker's answer (acks slower than the relay's PublishTimeout?); not sending it again meanwhile", relay.ErrUnavailable)

// landed reports whether id belongs to a write that outlived its Publish, and
// then its outcome: nil (acknowledged), its error, or errInFlight if the write is
// still running when ctx ends.
func (p *Publisher) landed(ctx context.Context, id uuid.UUID) (error, bool) {
	p.mu.Lock()
	fl, ok := p.inflight[id]
	p.mu.Unlock()
	if !ok {
		return nil, false
	}
	select {
	case <-fl.f.done:
	case <-ctx.Done():
		return errInFlight, true
	}
	p.mu.Lock()
	delete(p.inflight, id)
	p.mu.Unlock()
	return fl.f.errs[fl.j], true
}

// sweep forgets the outcomes of ended writes that no Publish asked about within
// flightTTL (their rows went to another relay, or were dead-lettered).
func (p *Publisher) sweep() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, fl := range p.inflight {
		if !fl.f.ended.IsZero() && time.Since(fl.f.ended) > flightTTL {
			delete(p.inflight, id)
		}
	}
}

// publishTopic writes msgs[idx] (all of topic) and sets errs[idx]. If ctx ends
// first, the write goes on (see flight) and its messages fail as ErrUnavailable.
func (p *Publisher) publishTopic(ctx context.Context, topic string, msgs []outbox.Message, idx []int, errs []error) {
	f := &flight{done: make(chan struct{}), errs: make([]error, len(idx))}
	// kafka-go's own timeouts bound the write; this bounds its metadata look-ups.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(p.cfg.MaxAttempts+1)*(p.cfg.WriteTimeout+time.Second))
	go func() {
		defer cancel()
		sub := make([]error, len(msgs))
		p.write(wctx, topic, msgs, idx, sub)
		for j, i := range idx {
			f.errs[j] = sub[i]
		}
		p.mu.Lock()
		f.ended = time.Now()
		p.mu.Unlock()
		close(f.done)
	}()
	select {
	case <-f.done:
		for j, i := range idx {
			errs[i] = f.errs[j]
		}
	case <-ctx.Done():
		err := fmt.Errorf("%w: topic %q: no answer from the broker before the publish deadline (%v); the write goes on, and its outcome counts for the next publish of these messages",
			relay.ErrUnavailable, topic, context.Cause(ctx))
		p.mu.Lock()
		for j, i := range idx {
			p.inflight[msgs[i].ID] = flying{f: f, j: j}
			errs[i] = err
		}
		p.mu.Unlock()
	}
}

// write is publishTopic's kafka-go write.
func (p *Publisher) write(ctx context.Context, topic string, msgs []outbox.Message, idx []int, errs []error) {
	if p.cfg.CreateTopics {
		if err := p.ensureTopic(ctx, topic); err != nil {
			for _, i := range idx {
				errs[i] = err
			}
			return
		}
	}
	kms := make([]kafka.Message, len(idx))
	for j, i := range idx {
		kms[j] = toKafka(&msgs[i])
	}
	w, err := p.writer(ctx)
	if err != nil {
		for _, i := range idx {
			errs[i] = err
		}
		return
	}
	defer p.putWriter(w)
	err = w.WriteMessages(ctx, kms...)
	var tooLarge []int
	for j, i := range idx {
		errs[i] = p.classify(topic, messageError(err, j))
		if errors.Is(errs[i], ErrMessageTooLarge) {
			tooLarge = append(tooLarge, j)
		}
	}
	// The broker refuses a partition batch as a whole; find the culprit(s), one
	// message at a time, holding back the rest of a key once one of it fails.
	if len(tooLarge) > 1 {
		failedKeys := map[string]bool{}
		for _, j := range tooLarge {
			key := msgs[idx[j]].Key
			if key != "" && failedKeys[key] {
				errs[idx[j]] = relay.ErrHeldBack
				continue
			}
			errs[idx[j]] = p.classify(topic, messageError(w.WriteMessages(ctx, kms[j]), 0))
			if errs[idx[j]] != nil && key != "" {
				failedKeys[key] = true
			}
		}
	}
}

func messageError(err error, j int) error {
	var werrs kafka.WriteErrors
	if errors.As(err, &werrs) && j < len(werrs) {
		return werrs[j]
	}
	return err
}

// classify turns a kafka-go error into the relay's vocabulary.
func (p *Publisher) classify(topic string, err error) error {
	if err == nil {
		return nil
	}
	var kerr kafka.Error
	var tooLarge kafka.MessageTooLargeError
	switch {
	case isAuth(err):
		return fmt.Errorf("%w: %w: topic %q: %v; check the relay's SASL credentials (KAFKA_SASL_*) and its ACLs (write on the topic)",
			relay.ErrUnavailable, ErrBrokerAuth, topic, err)
	case errors.As(err, &tooLarge), errors.Is(err, kafka.MessageSizeTooLarge), errors.Is(err, kafka.RecordListTooLarge):
		return fmt.Errorf("%w: topic %q refused it (%v); raise the topic's max.message.bytes or shrink the message",
			ErrMessageTooLarge, topic, err)
	case errors.Is(err, kafka.UnknownTopicOrPartition):
		return fmt.Errorf("%w: %q; create the topic, or start the relay with --create-topics (CreateTopics)", ErrTopicMissing, topic)
	case errors.As(err, &kerr) && !kerr.Temporary():
		return fmt.Errorf("topic %q: %w", topic, err)
	default: // network errors, timeouts, retriable broker errors
		return fmt.Errorf("%w: topic %q: %v", relay.ErrUnavailable, topic, err)
	}
}

// isAuth reports the broker refusing the relay itself: its login or its rights.
// Every message would fail alike, so none of them is at fault.
func isAuth(err error) bool {
	for _, code := range []kafka.Error{
		kafka.SASLAuthenticationFailed, kafka.IllegalSASLState, kafka.UnsupportedSASLMechanism,
		kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed, kafka.GroupAuthorizationFailed,
		kafka.TransactionalIDAuthorizationFailed, kafka.DelegationTokenAuthorizationFailed,
	} {
		if errors.Is(err, code) {
			return true
		}
	}
	return false
}

func (p *Publisher) ensureTopic(ctx context.Context, topic string) error {
	p.mu.Lock()
	done := p.created[topic]
	p.mu.Unlock()
	if done {
		return nil
	}
	resp, err := p.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: p.cfg.TopicPartitions, ReplicationFactor: p.cfg.ReplicationFactor,
	}}})
	if err != nil {
		return fmt.Errorf("%w: create topic %q: %v", relay.ErrUnavailable, topic, err)
	}
	if err := resp.Errors[topic]; isAuth(err) {
		return p.classify(topic, err)
	} else if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("create topic %q: %w", topic, err)
	}
	p.cfg.Logger.Info("kafkapub: topic ready", "topic", topic)
	p.mu.Lock()
	p.created[topic] = true
	p.mu.Unlock()
	return nil
}

func toKafka(m *outbox.Message) kafka.Message {
	km := kafka.Message{Topic: m.Topic, Value: m.Payload}
	if m.Key != "" {
		km.Key = []byte(m.Key)
	}
	names := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	km.Headers = make([]kafka.Header, 0, len(names)+1)
	km.Headers = append(km.Headers, kafka.Header{Key: outbox.HeaderMessageID, Value: []byte(m.ID.String())})
	for _, k := range names {
		km.Headers = append(km.Headers, kafka.Header{Key: k, Value: []byte(m.Headers[k])})
	}
	return km
}
