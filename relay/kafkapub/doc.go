// Package kafkapub is the relay's Kafka publisher, built on segmentio/kafka-go's
// protocol layer.
//
// Guarantee: Publish returns nil only after every message was acknowledged by all
// in-sync replicas (acks=all). Messages of one key go to one partition (kafka-go's
// Murmur2Balancer, the partitioner of the Java client and librdkafka, so keys land
// where other Kafka producers would put them) in the order given.
//
// How a batch is sent: its messages are placed on their topics' partitions, and
// each partition's messages cut into record batches of at most MaxMessageBytes
// (kafka-go's record batch encoding, no compression). The partition leaders come
// from the metadata kafka-go's Transport caches (MetadataTTL 2s) and routes by.
// Then each round sends, per leader broker, ONE produce request carrying the next
// record batch of every partition it leads; the leaders in parallel. Further
// rounds carry what one did not: the rest of a partition holding more than one
// record batch, a batch the broker refused as too large (its messages one by one),
// a batch that failed with a retriable error (after a backoff, up to MaxAttempts
// tries; after NOT_LEADER_FOR_PARTITION and the like, or no answer at all (the
// connection dropped, a timeout), the metadata is refreshed first, so a moved
// leader is found within the Publish). A partition has one request in flight at a
// time, so its messages reach the broker in order; once a message of a key
// failed, the key's later messages are held back (relay.ErrHeldBack), not sent,
// also on other topics when it failed before sending (its topic missing or not
// created). Each partition's answer counts for its own messages only: one refused
// partition fails its messages, the request's other partitions land. kafka-go's Writer sent one request per partition instead, each
// on its own connection: against a broker that serves requests one at a time a
// batch waited for the slowest of them. Paired runs against it (2 shared cores,
// load 10-22, machine 100% busy, 2026-12-01): BenchmarkRelayWakeup's publish p50
// / p99 1.5 / 33-41 ms against 5.4-6.0 / 85-105 ms, the relay's CPU 1.9-2.0 s
// against 3.8 s for its 20,000 messages; BenchmarkHopLatency's publish p50 at 64
// hops in flight 1.6-9.8 ms against 27-37 ms; BenchmarkRelayDrain with 10 ms per
// produce request 33-52k against 12-22k msgs/s for one relay in two pairs (in a
// third, 22.0k against 26.9k, its own run's raw drain was 0.29× the other's).
// Without injected latency the drain's rate and the relay's CPU per message
// (12.8-18.4 µs either way) moved within the noise; its profile puts kafka-go
// and this package at 2.9 µs of CPU per message against 4.9, the GC's marking
// at half.
//
// Failures are classified for the relay (see relay.Publisher):
//   - the broker cannot be reached, or answers with a retriable error (leader
//     moving, timeout): the message's error wraps relay.ErrUnavailable, and the
//     relay retries it without spending an attempt; if nothing was acknowledged,
//     Publish returns one such error for the whole batch;
//   - the broker refuses the relay itself (SASL login failed, not authorised for
//     the topic or cluster): ErrBrokerAuth, also wrapping relay.ErrUnavailable,
//     since every message would fail alike (after a credential rotation, say):
//     no attempt is spent, the relay backs off and logs it, and Health reports it;
//   - the broker refuses the message itself (too large, topic missing): a
//     per-message error in a relay.MessageErrors; the relay spends one of the
//     message's attempts and dead-letters it after the last.
//
// Health reports the broker for health checks: the last Publish's failure of
// the broker as a whole, or brokers that do not answer a request.
//
// A message larger than Config.MaxMessageBytes (measured as outbox.RecordSize,
// like Enqueue's check) is refused before sending, as relay.ErrPermanent: the
// relay dead-letters it at once. When the
// broker refuses a whole partition batch as too large (its limit is below ours),
// the batch's messages are sent again one by one, so only the oversized message
// fails and its neighbours are published.
//
// A slow broker: a produce request under way is never abandoned: one the broker
// got may still land. Each leader's answer is recorded as it arrives. When
// Publish's deadline passes first, what was acknowledged by then is published
// (and what failed for good failed); the messages still unanswered fail as
// relay.ErrUnavailable while the requests under way go on (the write starts no
// further round: TestPublishThatGaveUpStartsNoNewRounds), and the next Publish of
// such a message sends no second copy while the first is in flight, waits for its
// outcome instead and takes a late acknowledgement as its own. So acks slower
// than the relay's PublishTimeout delay that broker's messages by a cycle, not the
// other leaders' (TestSlowLeaderDoesNotFailOtherLeadersAckedMessages), and
// neither multiply their copies nor queue more of them
// (TestSlowBrokerDoesNotMultiplyDuplicates).
//
// A missing topic is created only when Config.CreateTopics is set; otherwise it is
// a per-message error naming the topic and the two ways out. A topic the cached
// metadata lacks costs a forced refresh (it may be new) at most once per metadata
// TTL (2 s), however often its rows are retried.
package kafkapub
