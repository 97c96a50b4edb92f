package kafkapub

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol/apiversions"
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
	// headers and overhead, as Enqueue counts them) before sending, and bounds the
	// record batch of one partition in a produce request (the broker's limit
	// applies to a record batch); set it to the broker's message.max.bytes, and
	// outbox.Config.MaxMessageBytes to the same. Defaults to
	// outbox.DefaultMaxMessageBytes (1 MiB).
	MaxMessageBytes int
	// WriteTimeout bounds one produce request; the broker is asked to wait at
	// most half of it for the in-sync replicas, so its REQUEST_TIMED_OUT answer
	// comes before the publisher gives up on the connection. Keep it at least the
	// relay's PublishTimeout (outbox-relay does): a shorter one makes the
	// publisher resend a batch the broker may still be writing. Defaults to 10s.
	WriteTimeout time.Duration
	// MaxAttempts is how often the publisher itself tries a partition batch that
	// fails with a retriable error (leader moving, timeout) before reporting
	// failure to the relay. Defaults to 3.
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
	if c.WriteTimeout < 0 {
		bad("WriteTimeout is %v; it must be positive", c.WriteTimeout)
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

// Publisher implements relay.Publisher on kafka-go's protocol layer: its
// Transport (connections, SASL, TLS, API versions, cached metadata) carries one
// produce request per leader broker per Publish (see send).
type Publisher struct {
	cfg       Config
	addr      net.Addr
	transport *kafka.Transport
	client    *kafka.Client
	balancer  kafka.Murmur2Balancer
	slots     chan struct{} // one per write in progress: at most maxWrites
	// maxRequestBytes is maxRequestBytes (tests lower it).
	maxRequestBytes int
	writes          sync.WaitGroup

	refreshMu sync.Mutex
	refreshed time.Time // the last forced metadata refresh

	mu        sync.Mutex
	created   map[string]bool
	missing   map[string]time.Time // topics a forced refresh did not find, and when
	inflight  map[uuid.UUID]flying // messages of writes that outlived their Publish
	brokerErr error                // the last Publish's failure of the broker as a whole, nil after a success
	probed    time.Time            // when Health last asked the broker
	probeErr  error
}

// flight is one write of a Publish's messages. A write is never cancelled: a
// produce request the broker got may still land. When the Publish that started
// it returns first (its deadline passed), what was settled by then counts (an
// acknowledgement is a success), and the write's unsettled messages stay in
// Publisher.inflight; the next Publish of such a message waits for the write's
// outcome instead of sending another copy, and takes a late acknowledgement as
// its own.
type flight struct {
	*answers // by index into the Publish's msgs; final once done is closed
	done     chan struct{}
	ended    time.Time // when done was closed; under Publisher.mu
}

// flying locates a message in a flight.
type flying struct {
	f *flight
	i int
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
		MetadataTTL: metadataTTL,
	}
	addr := kafka.TCP(cfg.Brokers...)
	return &Publisher{
		cfg: cfg, addr: addr, transport: transport, slots: make(chan struct{}, maxWrites), maxRequestBytes: maxRequestBytes,
		client:  &kafka.Client{Addr: addr, Transport: transport, Timeout: cfg.WriteTimeout},
		created: map[string]bool{}, missing: map[string]time.Time{}, inflight: map[uuid.UUID]flying{},
	}, nil
}

// metadataTTL is how long the transport serves the cluster's metadata from its
// cache.
const metadataTTL = 2 * time.Second

// maxWrites bounds the writes of a Publisher in progress: one per publish loop is
// what the relay needs, more are writes that outlived their Publish (a slow broker).
const maxWrites = 16

// Close waits for the writes still under way (each bounded by its timeouts) and
// closes the connections.
func (p *Publisher) Close() error {
	p.writes.Wait()
	p.transport.CloseIdleConnections()
	return nil
}

// Publish sends msgs, one produce request per leader broker, and classifies
// failures (see the package documentation).
func (p *Publisher) Publish(ctx context.Context, msgs []outbox.Message) error {
	errs := make([]error, len(msgs))
	var idx []int
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
		idx = append(idx, i)
	}
	if len(idx) > 0 {
		p.publish(ctx, msgs, idx, errs)
	}

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
// is returned then), and the brokers answered a request in the last
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
	// Not a metadata request: kafka-go's Transport answers those from its cache of
	// the last layout it saw, so they succeed while the brokers are gone.
	_, err = p.transport.RoundTrip(ctx, p.addr, &apiversions.Request{})
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
	return fl.f.errs[fl.i], true
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

// publish writes msgs[idx] and sets errs[idx]. If ctx ends first, the write goes
// on (see flight) and its messages fail as ErrUnavailable.
func (p *Publisher) publish(ctx context.Context, msgs []outbox.Message, idx []int, errs []error) {
	f := &flight{answers: newAnswers(len(msgs), idx), done: make(chan struct{})}
	f.gaveUp = ctx.Done()
	// WriteTimeout bounds each produce request; this bounds the write with its
	// retries and metadata look-ups.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(p.cfg.MaxAttempts+1)*(p.cfg.WriteTimeout+time.Second))
	p.writes.Add(1)
	go func() {
		defer p.writes.Done()
		defer cancel()
		p.write(wctx, msgs, idx, f.answers)
		p.mu.Lock()
		f.ended = time.Now()
		p.mu.Unlock()
		close(f.done)
	}()
	select {
	case <-f.done:
		for _, i := range idx {
			errs[i] = f.errs[i]
		}
	case <-ctx.Done():
		err := fmt.Errorf("%w: no answer from the broker before the publish deadline (%v); the write goes on, and its outcome counts for the next publish of these messages",
			relay.ErrUnavailable, context.Cause(ctx))
		p.mu.Lock()
		f.mu.Lock()
		for _, i := range idx {
			if errs[i] = f.errs[i]; errs[i] != errNotSent {
				continue // settled in time: acknowledged, or failed for good
			}
			p.inflight[msgs[i].ID] = flying{f: f, i: i}
			errs[i] = err
		}
		f.mu.Unlock()
		p.mu.Unlock()
	}
}

// write is publish's write: missing topics created (CreateTopics), then send.
func (p *Publisher) write(ctx context.Context, msgs []outbox.Message, idx []int, a *answers) {
	if p.cfg.CreateTopics {
		ready := map[string]error{}
		var keep, failed []int
		for _, i := range idx {
			t := msgs[i].Topic
			err, ok := ready[t]
			if !ok {
				err = p.ensureTopic(ctx, t)
				ready[t] = err
			}
			if err != nil {
				a.set([]int{i}, err)
				failed = append(failed, i)
				continue
			}
			keep = append(keep, i)
		}
		idx = heldBehind(msgs, keep, firstFailures(msgs, failed), a)
	}
	select {
	case p.slots <- struct{}{}:
		defer func() { <-p.slots }()
	case <-ctx.Done():
		a.set(idx, fmt.Errorf("%w: %d writes to the broker still running: %w", relay.ErrUnavailable, maxWrites, ctx.Err()))
		return
	case <-a.gaveUp:
		a.set(idx, fmt.Errorf("%w: %d writes to the broker still running", relay.ErrUnavailable, maxWrites))
		return
	}
	p.send(ctx, msgs, idx, a)
}

// classify turns a kafka-go error into the relay's vocabulary.
func (p *Publisher) classify(topic string, err error) error {
	if err == nil {
		return nil
	}
	var kerr kafka.Error
	switch {
	case isAuth(err):
		return fmt.Errorf("%w: %w: topic %q: %v; check the relay's SASL credentials (KAFKA_SASL_*) and its ACLs (write on the topic)",
			relay.ErrUnavailable, ErrBrokerAuth, topic, err)
	case tooLarge(err):
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
	delete(p.missing, topic)
	p.mu.Unlock()
	return nil
}
