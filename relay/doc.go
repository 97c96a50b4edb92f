// Package relay publishes committed outbox rows (package outbox) to a broker:
// claim → publish → settle, pipelined, in loops woken by an indexed probe (or
// LISTEN/NOTIFY, if asked) and by polling.
//
// Guarantee: every committed row is published at least once; a row is deleted only
// after the broker acknowledged it (kafkapub: acks=all); messages of one key are
// published in order; a message the broker keeps refusing ends dead-lettered,
// visible with its error (outbox.ListDead), never silently dropped. Consumers get
// exactly-once effects by deduplicating on the message-id header (package inbox).
//
// # Commit order
//
// A key's messages are published in the order their transactions committed
// (messages of one transaction in the order they were enqueued). The claim scans
// pending rows in seq (insert) order and takes every committed one: an
// uncommitted row is invisible to it, and a transaction still open holds back
// nothing else. What that gives:
//   - transactions that serialise on the key (lock or update a row before they
//     enqueue, as a saga's transitions do on its instance): commit order, which is
//     also their insert order, since the second inserts only after the first
//     committed, so every snapshot that sees the second sees the first;
//   - concurrent transactions that do not: the order they committed in, or insert
//     order when both had committed before the same claim. Neither waits for the
//     other.
//
// The relay used to take a row only once its transaction was older than every one
// still open (txid below pg_snapshot_xmin), which kept insert order for
// concurrent writers of a key but let any open transaction on the server, in any
// database, hold back every later commit until it ended: a long report, a
// pg_dump or a session left idle in transaction stopped publishing, and under load
// each slow producer commit held back the rows of all the others
// (TestOpenTransactionDoesNotHoldBackLaterCommits). BenchmarkRelayWakeup (2,000
// msgs/s from 16 producers), three interleaved pairs at load 6-12: commit →
// publish call p50 18.5, 21.2, 14.9 → 5.0, 12.7, 12.9 ms; commit → Kafka p99 192,
// 199, 400 → 160, 153, 256 ms (what is left of the tail is claims and settles
// waiting for CPU on the loaded cores).
//
// Why seq and not (txid, seq), as watermill-sql orders: a transaction takes its
// xid at its first write, before it waits for a lock. Two transactions serialising
// on a key's business row (UPDATE ... then enqueue) can therefore hold xids in the
// opposite order of their inserts; (txid, seq) then publishes the second before
// the first. TestXidRace builds that case; TestPerKeyOrderUnderConcurrentProducers
// shows it under load.
//
// A row whose transaction took its seq before another's and commits after the
// relay has seen the other is behind what the probe reads (it reads the rows added
// after the highest seq it has seen). For each probe that found rows it remembers
// the transactions open then (its snapshot's xmax) and wakes the loops once those
// have all ended (TestLateRowIsFoundWithoutWaitingForPoll); a long transaction
// open at that probe delays only such rows, by at most PollInterval. That needs a
// transaction to hold its xid before its row takes a seq, which outbox.Enqueue
// sees to (a row written otherwise may, for a moment, hold a seq with no xid,
// invisible to every snapshot as an open transaction).
//
// A long transaction still costs the relay something: vacuum cannot remove the
// rows deleted since it began, so every claim reads past them. The relay reports
// the oldest one's age after every heartbeat (Hooks.HeldBack) and logs its pid,
// start and query once it is older than Config.HoldWarnAfter.
//
// # Several relays
//
// Keys are spread over Shards (256) shards by the generated column
// "shard" = hashtext(key) & 255. A relay publishes only rows of shards it leases
// (table outbox_leases: owner, expires_at on the database clock). Every
// HeartbeatInterval a relay renews its leases, registers itself in outbox_relays,
// and moves to its fair share ceil(256 / live relays): it takes free or expired
// shards, or releases its surplus after the batch in flight. A new relay gets its
// share within two heartbeats; a relay that stops releases everything at once; a
// relay that dies (kill -9) loses its shards when its leases expire, so the others
// own them after at most LeaseTTL + HeartbeatInterval (defaults 10 s + 2 s;
// TestKilledRelayProcess measures 2.1 s with 2 s + 0.2 s).
//
// Within one relay, Workers publish loops (default 2) split the leased shards by
// shard mod Workers, so each key, living on one shard, is served by one loop in
// order. Keys of different loops may interleave differently on a shared Kafka
// partition; only each key's own order is promised.
//
// What several relays buy (BenchmarkRelayDrain, 1 KiB rows, 8 partitions, each
// relay owning a third of the shards before the clock starts and publishing a
// third of the rows; 2 shared cores at 100% busy, load 4-9): with 10 ms injected
// per produce request, ×3 gave 0.64× one relay (one relay was not yet held back
// by the latency: 29k msgs/s, as on the plain broker); with 20 ms 0.94×; with
// 50 ms 1.97× (9.1k → 18.0k msgs/s). A kafka-go Writer keeps one produce request
// per partition in flight, and a relay process then had one Writer, whatever
// Workers said: one relay's rate under broker latency was about its batches' rows
// per partition request × partitions / latency. kafkapub then used a Writer per
// write in progress (it now sends one produce request per leader broker per
// Publish), so each publish loop had its requests in flight: relay ×1
// went to 28.8k msgs/s at 20 ms (15.5k before) and 14.6k at 50 ms (9.1k), and
// ×3/×1 to 0.83 and 1.47 (load 8-11; single runs, noisy). On these two cores
// three relays then compete for the CPU that one relay already uses. Quiet runs
// (16:25 and 16:43 UTC on 2026-12-01, load 0.2-2.6, the relays' pools sized by
// Config.PoolConns): plain broker ×3/×1 0.70 and 1.11; 10 ms 1.00 and 1.19 (one
// relay 38k msgs/s, the machine 79% busy); 50 ms 1.78 (15.6k → 27.8k msgs/s).
//
// Part of that 1.78 was the benchmark's: it released the backlog by rolling back
// the transaction holding it, and each publish loop found the rows only when its
// held-rows pause (backed off to PollInterval meanwhile) ran out, so the three
// processes' loops started up to 470 ms apart in a 3 s drain, where ×1's two
// loops (one process, their pauses in step) started 9 ms apart. It then woke
// every relay at once (their first publishes 12-123 ms apart at load 8-21, the
// spread of the first claims on busy cores; since no open transaction holds rows
// back, see Commit order, it leases each relay its share beforehand and holds the
// relays' publishes until one signal, once each has connected, warmed its broker
// connection and claimed its first batches: first publishes 4 ms apart at load
// 2-4). Side by side at 50 ms, 100k rows,
// load 13-14, two rounds: the old start 812-864 ms apart, ×1's loops in publish
// calls for 83-85% of the drain, ×1 13.6-13.7k msgs/s; the new one 56-61 ms,
// 92-94%, 15.5-16.3k (×3/×1 2.05-2.06 against 1.30 and 2.41: one new round's
// publish calls took 105 ms, starved of CPU). With that, and measured per batch
// (publish trace, timings of each claim, publish and settle in the relay), the
// rest is CPU, not coordination:
//   - a publish takes as long with three relays as with one once the cores have
//     room: 207-210 ms p50 against 207 ms with 200 ms injected. kafka-go opens a
//     connection per concurrent produce request, so kfake's rule that a
//     connection's requests are answered one after the other (a real broker's
//     too) never queues one loop's request behind another's, and the injected
//     sleeps of different connections overlap. At 50 ms the publishes of ×3 took
//     62-64 ms p50 against 56 ms, and its claims 33-73 ms against 13 ms: both
//     wait for CPU;
//   - every claim returns a full batch (500 rows, p10 500); no shard changes hands
//     during the drain (no release waits: the relays own their fair shares before
//     the clock starts, 86/85/85 shards);
//   - a drain lasts as long as its busiest publish loop: with 1000 keys on 256
//     shards it has 1.05× the mean rows with ×3 (6 loops), 1.03× with ×1, which
//     caps ×3/×1 near 2.94;
//   - ×3 costs 54-66 µs of CPU per message against ×1's 40-58 (PostgreSQL 19-25
//     against 11-14: each loop's claim scans past the rows of the five other
//     loops), so at 50 ms, 40k msgs/s, three relays want about 1.3 of the two
//     cores, and any other load on the machine shows in ×3 first.
// Measured with the benchmark's new start (single runs, noisy): with kafkapub's
// Writers, 50 ms ×3/×1 2.41 (16.7k → 40.3k msgs/s, load 8) and 2.36 (load 13);
// 100 ms 2.12 (load 13) and 2.77-2.94 (load 18-20, 10-20k backlogs); 200 ms 2.92
// (4.7k → 13.6k, load 7). With one produce request per broker per Publish and the
// delayed drains as long as the plain ones (100k rows), four runs at load 12-17:
// 50 ms 1.33-2.38 (15.6k → 37.2k msgs/s at 2.38), at 1.33 the loops of ×3 in
// publish calls for 51% of the drain against 90% for ×1 (they waited for claims
// on cores the other load kept 100% busy: 74 ms per publish call against 58), at
// 2.38 80%; 100 ms 1.97-2.87 (8.2k → 23.4k at 2.84), at 2.77 the loops 89% in
// publish calls (108 ms each, as ×1's). On the plain broker that publisher took
// relay ×1 to 64k msgs/s (the relay process 9.5 µs per message) and ×3 to 0.41×
// one, and in other runs at the same load 0.99×, 1.48× and 1.91×: where other
// work keeps the cores busy, more processes get more of them, so the plain ratio
// says little; per message ×3 costs PostgreSQL 18-27 µs against 12-14 (its claims
// read 852 buffers against 285) and the relay processes 13-30 against 9.5-16.5
// (three Go runtimes: scheduling and the network poller took 29% of the three
// relays' CPU samples against 13% of one's). A quiet run (18:34, load 2, machine
// 49-99% busy by the benchmark alone): relay ×1 71.1k msgs/s, 0.49× the raw
// claim+delete (25.4 µs of CPU per message: PostgreSQL 12.3, broker 3.6, relay
// 9.1); ×3 0.72× one (38.0 µs: PostgreSQL 18.6), ×3 with Workers 1 each 0.93×
// one with Workers 1; 50 ms 16.8k → 38.5k (2.28×, publish calls 57 → 70 ms, the
// machine 80% busy), 100 ms 8.8k → 24.1k (2.75×).
// make bench prints the 50 ms and 100 ms lines (SAGABOX_BENCH_DELAYS picks
// others); each relay line says how far apart the relays started and ended, the
// publish calls' mean time and the share of the drain the loops spent in them
// (well below 1: they waited for the database or the CPU, not the broker), and
// the busiest loop's share of the rows.
//
// Where a drain's CPU goes (BenchmarkRelayDrain's CPU µs per message, read from
// /proc between the first record and the backlog deleted; four runs at load 8-22,
// the machine 94-100% busy during the relay lines): the raw claim+delete costs
// PostgreSQL 4.4-8.2 µs a row, on one connection; relay ×1 costs PostgreSQL
// 12.2-15.2 (claim and delete), the broker 5.3-6.9 and the relay process 14.8-21.1
// (kafka-go, GC and the Go scheduler the most; the claim's reading and scanning
// about a quarter), 35-47 in all. Two cores then give at most 2/35 per µs where
// the raw drain, bound by one backend, gets 1/4.4-1/8.2: relay ×1 cannot reach
// 0.85× raw claim+delete here (≤ 0.25-0.45×) unless the relay's and the broker's
// CPU go, and the raw produce alone (broker 4.1-5.3 plus client 5.3-6.3) is 1.2-2.4×
// the raw drain's. Relay ×3 costs 59-70 µs per message: PostgreSQL 20.5-25.9,
// broker 7.2-10.6, relay processes 26.0-33.3. So on CPU-bound cores three relays
// deliver about 0.5-0.7× one (the rates of single runs swing with the other load:
// 0.58-1.20×). Half of the extra is the three relay processes (their runtimes'
// scheduling and GC, per process), half PostgreSQL: every publish loop scans past
// the rows of all the others' shards, and ×3 has 6 loops. With Workers 1 (3 loops
// in all) PostgreSQL took 17.1-19.3 µs, with one loop (relay ×1, Workers 1; claim
// with no shard test) 10.9-15.1. The claim's per-row costs are down (pg_stat_statements
// buffers per claim: ×1 1250 → 309-346, ×3 1797 → 846-863): the lookup of a
// waiting earlier row of the key runs only when some row waits for a retry, and
// the shard test is a hash probe. The scan past other relays' rows is cheaper
// since migration 00010: the pending index is ("seq", "shard"), and a claim of a
// shard list bounds "shard" to the range between its lowest and highest shard (an
// index condition on the second column: the index entries of other shards are
// still read, PostgreSQL 15 has no skip scan, but their rows are not fetched from
// the heap). Leases are taken lowest first; the relay holding shard 0 gives up its
// highest surplus shards and every other relay its lowest, so relays started
// together mostly get [0-85] [86-171] [172-255] (the benchmark prints them; in one
// drain of six, one got [86-133 220-255]), and a third relay joining two gets one
// range too, where with both others giving up their
// highest it got two ([86-127 214-255], TestRelaysJoiningOneByOneEachLeaseOneRange)
// and read the second relay's rows between them. That holds up to three relays: a
// fourth joining three gets two ranges ([64-105] [170-191]), a fifth three, and
// after the relay of shard 0 leaves, others may hold two ranges far apart; only
// speed suffers (targets by rank among the live relays would keep one range each,
// at the price of moving more shards on every join). Within a relay, the loops
// split its shards by shard mod Workers, so each loop's claims still fetch the
// other loop's rows in the range. The heap pages are still read (each page holds
// rows of every shard: 718-742 buffers per claim with ×3 against 257-276 with ×1),
// but fewer tuples: the claims' time with ×3 fell from
// 31.9-42.8 ms to 17.7-28.2 ms per call on the loaded machine. Same command, load
// 4-9, single runs: ×3/×1 on the plain broker 0.43 and 0.58 before, 0.70, 0.92
// and 1.03 after; PostgreSQL per message with ×3 21.3-22.4 µs before, 14.2-18.5
// after (×1: 11.4-12.0). Two quiet runs with every change of that round (20:39 and
// 20:46 UTC on 2026-12-01, load 1-3): relay ×1 76.1k and 69.3k msgs/s against a raw
// claim+delete of 76.8k and 146.4k (0.99× and 0.47×; 22.8-23.6 µs of CPU per
// message: PostgreSQL 9.7-10.3, broker 3.3-3.6, relay 9.3-9.4); ×3 0.76× and 0.81×
// one; 50 ms 2.01× and 2.64× (in the first, one relay leased two ranges,
// [86-133 220-255]); 100 ms 2.08× and 2.86×. Two more at 21:09-21:12 (load 2-3):
// relay ×1 75.0k and 88.8k msgs/s (19.8 µs per message), ×3 0.98× and 0.96× one
// (22.7-24.4 µs), 50 ms 1.88× and 1.73× (the broker's CPU per message rose to
// 14-20 µs in those lines, from 3-4 on the plain broker).
//
// # Pipelining
//
// A loop's cycle is a run of batches: while batch N is published, batch N+1 is
// claimed on another connection, and batch N-1 is settled in the background. What
// stays as it was: publishes of one loop follow each other in claim order, never
// overlapping, so a key's rows reach the Publisher in order; a batch is published
// only if every shard of the run is still leased for PublishTimeout (checked at
// publish time, not claim time), and a release waits until the loop's claimed
// batches are settled or dropped. What changes:
//   - the claims of a run continue from the last row the one before scanned
//     (outbox.Cursor), since the rows in flight are not deleted yet. A row that
//     commits behind the cursor waits for the next run; so that no later row of
//     its key overtakes it, a run takes only rows its first claim's snapshot saw
//     (committed before it), and uses one "now" for retries. A run
//     ends when a claim does not fill or after min(PollInterval, 1 s); the next
//     starts from the loop's floor (below it every row is settled, see Wake-ups),
//     or from the oldest row once per PollInterval;
//   - a key whose row failed in batch N is dropped from batch N+1 (already
//     claimed) and from the rest of the run; the next run finds its rows again,
//     behind the failed row's retry;
//   - a run that fails (broker down, settle failed, lease lost) drops the batch
//     claimed ahead; its rows are simply claimed again later. A takeover is what
//     it was: at most the unsettled batches (now up to two per loop) are
//     published again by the new owner, in order.
//
// With MaxPublishes above 1 (the default is 1), a loop whose cycle caught up (its
// last claim did not fill a batch) leaves that batch publishing and settling in
// the background and starts its next cycle, with up to MaxPublishes batches under
// way. The claims of that cycle leave every key of the batches under way (through
// outbox.Cursor.Blocked) and their rows without a key, so a key still has one
// batch in flight at a time and its rows go out in order. A batch under way that
// fails, as a whole or per message, holds its keys until it is dropped or settled
// (its failures recorded), and the next claim finds its rows again in their turn
// (TestOverlappingPublishesKeepKeyOrderWhenOneFails). Leases and takeover are as
// above: each batch checks its shards' leases before it publishes and holds off
// their release until it is settled or dropped.
//
// Settles commit with synchronous_commit off (their transaction only): a settle
// lost in a crash means its rows are published again, which at-least-once allows,
// and the relay's commits do not queue behind the producers' WAL flushes.
// A loop then uses up to two pool connections at once (the claim running ahead,
// the settle before), one more per batch under way after its cycle, so a relay
// wants (1+MaxPublishes)·Workers + 2 (heartbeats, the probe); with
// fewer the loops queue for connections and Run logs a warning (New refuses only
// Workers ≥ MaxConns). cmd/outbox-relay sizes its pool for that.
// Memory is bounded by three batches per loop (claiming, publishing, settling),
// plus MaxPublishes-1 under way after their cycles, and a batch by BatchSize rows
// and by MaxBatchBytes of payload (the claim statement ends at the row that
// reaches it, a running sum over the rows it scans, so the server sends no more):
// draining 1M rows of 1 KiB, a relay's peak RSS was 57 MiB, heap in use 37 MiB
// (BenchmarkRelayMemory; 37 and 17 MiB with 500-row batches). Without
// MaxBatchBytes, 2000 rows of 1 MiB would have been 2 GiB a batch
// (TestLargeMessagesArePublishedInBatchesOfMaxBatchBytes). Cut on the client
// instead, the server still sent every row up to BatchSize: 300 rows of 128 KiB
// in 1 MiB claims took 1.5-1.6 s, against 0.22 s cut by the statement and
// 0.12-0.14 s with a LIMIT of 8 (what is left: each claim still scans up to
// BatchSize rows past the bound, without sending or detoasting them). The running
// sum is not free for small rows: draining 1 KiB rows, PostgreSQL spent 9.6 and
// 9.2 µs a message with it against 7.2 and 8.3 without (two interleaved rounds,
// relay ×1 93.4k and 92.6k against 115.7k and 93.0k msgs/s); a bound cut on the
// client would cost nothing there, but a claim of 2000 large rows then moves
// gigabytes and can outlast PublishTimeout.
//
// BatchSize defaults to 2000 rows. Draining a backlog of 1 KiB rows, 500-row
// batches cost 19.5-21.8 µs of CPU per message in all (PostgreSQL, broker, relay)
// and 2000-row ones 12.5-16.8, the relay process's part 8.1-8.6 against 4.7-6.4:
// each claim, publish and settle has a fixed part (a round trip, a plan, a
// produce request per broker, a commit). Interleaved on
// one machine (two rounds, load 1-2, the benchmark's runs each on a fresh
// database and topic): relay ×1 79-83k msgs/s at 500, 116-141k at 2000; ×3/×1
// on the plain broker 0.71-0.87 at 500, 0.50-0.95 at 2000. Bigger batches also
// make one relay wait less for a slow broker (2 loops × 2000 rows per round
// trip), so the latency at which three relays scale out moves up: ×3/×1 was
// 2.72-2.82 at 100 ms with 500-row batches, and is 1.83-2.30 at 100 ms and 2.55
// at 200 ms with 2000 (one relay 31k and 15k msgs/s). Under a steady flow a
// claim takes what has arrived since the last one, a few rows, whatever
// BatchSize is: the batch size changes the catch-up rate, not the latency.
// Three runs of the whole benchmark with 200k-row backlogs (2026-12-02 00:49-01:12
// UTC, load 1-2.5): relay ×1 107k, 73k and 105k msgs/s, 0.94×, 0.60× and 1.07×
// the raw claim+delete measured on either side of it (the 0.60 run's raw
// kafka-go produce reached 57k msgs/s against 116-121k in the others: the
// machine's other tenants had the CPU); ×3/×1 0.75, 0.79 and 0.85 on the plain
// broker (three relays' claims each read every heap page of the seq range they
// scan, since each page holds rows of every shard: PostgreSQL's CPU per message
// 11-13 µs against 8-10), and 1.43/1.68/1.24 at 50 ms, 1.83/2.36/2.31 at 100 ms,
// 2.55/2.97/2.58 at 200 ms.

// Leases rather than session advisory locks: a lease expires by the clock, so a
// relay cut off from the database by a network partition (whose session may live
// on until TCP gives up) loses its shards at a known time, and the relay knows
// that time too. Fencing: a relay measures its lease on its own monotonic clock
// from just before the renewing statement, so its view ends before the database's.
// A batch starts only on shards whose lease stays valid for PublishTimeout, and its
// publish is cancelled after PublishTimeout. What a takeover can still cause: a
// batch that reached the broker but was not settled is published again by the new
// owner (a duplicate, which the inbox absorbs). kafka-go may even deliver a
// cancelled batch late, after the new owner's copies. Either way both relays send
// the key's rows in the same order, starting from the oldest unsettled one, so the
// first delivery of every message still comes in order; only duplicates come late.
//
// # Settling and failures
//
// Acknowledged rows are deleted in one statement per batch; failures are recorded
// in the same round trip. The delete finds each row where its claim found it (its
// ctid: a TID scan, no index lookup per row) and deletes it only while it is one of
// the rows claimed (its seq, never reused): a new row that took a vacuumed row's
// place is kept (TestSettleDoesNotDeleteANewRowInAClaimedRowsPlace), and a row
// updated since its claim (a relay that took the shard over recorded a failure on
// it) has moved, stays and is published again, a duplicate. The delete of 500 rows took
// 1.97 ms in the drain against 5.2-7.4 ms by "id" (995 buffers against 2449), and
// PostgreSQL's CPU per message of relay ×1 fell from 11.4-12.0 to 9.2 µs. A failure of the broker as a whole (unreachable,
// timeout, leader moving: relay.ErrUnavailable) spends no attempt: the rows stay
// as they are and the whole loop backs off (ErrorBackoffMin doubling up to
// ErrorBackoffMax), since every other row would fail the same way. A failure of
// one message (too large, topic missing) spends one attempt: attempts+1,
// last_error, next_attempt_at = now + RetryBackoffMin·2^(attempts-1) capped at
// RetryBackoffMax. While a key's head row waits for its retry, no later row of that
// key is published (the Publisher also holds back the rest of the key in the same
// batch, ErrHeldBack); other keys flow. After MaxAttempts the row is dead-lettered
// (dead_at, last_error) and stays in the table (at once, without retries, when
// the Publisher says it can never be published as it is: ErrPermanent); the key's later rows then flow, so
// one poison message cannot stop its key forever. outbox.RetryDead revives it; it
// then arrives after the rows that overtook it.
//
// A missing topic is such a per-message failure, with an error naming the topic
// and the fix (create it, or run the relay with --create-topics); it is retried and
// finally dead-lettered like any refused message, from which RetryDead brings it
// back once the topic exists.
//
// The database going away is waited out the same way: claims, settles, heartbeats
// and the LISTEN connection fail, are logged and retried with backoff; leases the
// relay could not renew are not used (see fencing) and are re-acquired afterwards.
//
// # Wake-ups
//
// By default the relay probes, with a pace that follows the load. A loop whose
// cycle published rows claims again BusyInterval (1 ms) after that cycle began, so
// at once after a cycle that took longer (a publish takes a few ms), and at once
// after a full batch; a loop whose cycle found nothing waits for a wake-up. While
// any loop waits, the relay asks for the highest pending seq above the one it last
// saw (outbox.Store.Probe: an index range scan over just the rows added since) and
// wakes the loops when there is one. The probe looks BusyInterval after it found
// rows or after the loops were last busy, and doubles its interval per empty probe
// up to ProbeInterval (5 ms); after a second without new rows it keeps doubling, up
// to 100 ms. So a busy relay and one that has just gone quiet look again within a
// millisecond or two, an idle one costs a probe per 100 ms. Polling every
// PollInterval (a claim from the oldest row) is the safety net, for retries falling
// due and for rows the probe cannot see: a row whose transaction took its seq
// before another's and committed after the relay scanned past it is found by the
// next row to arrive, by the claim the probe makes once the transactions open when
// it last found rows have ended (Commit order), or at most PollInterval. Rows a
// run left (committed after its first claim, or of a key under way) are looked at
// again after BusyInterval, doubling up to PollInterval while they stay held.
//
// Two wake-ups cost a claim for nothing and are gone: a cycle forgets a wake-up
// sent before it began (its claim sees those rows; the tail that had just ended
// always sent one, so every burst ended with two empty claims where one does), and
// while every loop is busy the probe sleeps until one goes idle instead of waking
// every BusyInterval. Same run, lines interleaved (BenchmarkSagaLoad's baseline, 8
// flows in flight, 8 messages a flow; load 5-11): claims 5.4-5.9 → 4.7-4.8 per
// flow, of which empty 1.0-1.3 → 0.8, probe timer wake-ups 4.4-6.7 → 2.3 per flow
// (64 in flight: 1.6-3.9 → 0.2). The probe woke, for a while, only the loops its
// new rows were for (shard mod Workers): 9-12% fewer claims, but a row whose
// transaction took its seq early and committed after a newer row of another
// loop's shards was probed then waited for PollInterval, since the next rows woke
// only their own loop (TestLateRowOfOneLoopIsFoundByTheNextRowOfAnother): it
// wakes every loop again. BenchmarkRelayWakeup before and after these changes,
// two pairs (load 10-23, the machine 82-99% busy, the load falling through the
// runs): commit→Kafka p50 47.4 → 32.5 and 18.9 → 19.1 ms, p99 326 → 329 and
// 189 → 216 ms, producers 1380 → 1532 and 1825 → 1988/s, relay CPU for the 20,000
// messages 3.26 → 2.91 and 2.85 → 2.26 s: no latency lost, 10-21% of the relay's
// CPU saved.
//
// What that pace bought (BenchmarkHopLatency, one saga step's hop, load average
// 5-7 on the 2 shared cores): at 1 saga in flight the relay's part (commit →
// publish start) went from p50 3.06 ms / p99 10.9 ms (busy re-claim and probe
// every 5 ms) to 1.97 / 6.35 ms and flows/s from 22 to 29; at 8 in flight from
// 3.19 / 21.2 ms to 1.96 / 15.1 ms, flows/s 63 → 108.
//
// LISTEN/NOTIFY remains for those who want it (Config.Listen, and the trigger
// enabled again: migration 00006 disables it). A notifying commit takes
// PostgreSQL's global notify lock, so producers commit one at a time, and with
// durable commits (fsync on) the lock is held across the WAL flush.
//
// Measured side by side before BusyInterval existed (BenchmarkRelayWakeup: 2,000
// msgs/s offered from 16 producer connections, 1 msg of 1 KiB per transaction,
// fsync on, broker and relay in processes of their own; 2 cores, load average 3-4,
// 83% busy):
//
//	                          commit→Kafka p50 / p99   producer tx p50 / p99   producer rate
//	no relay                          -                  0.82 / 4.5 ms          2000/s
//	NOTIFY + LISTEN              11.7 / 35.4 ms          9.62 / 35.5 ms         1447/s (0.72×)
//	probe, 5 ms                  16.6 / 54.8 ms          2.87 / 22.3 ms         1999/s (1.00×)
//	probe, 2 ms                  10.7 / 52.7 ms          2.12 / 13.2 ms         2000/s (1.00×)
//
// At load average 30-35 (producers reach only 1,224-1,330/s with no relay):
// NOTIFY p50/p99 9.2/142 ms, producers 0.22× their rate, tx p50 5.7×; probe 5 ms
// 23.9/221 ms, producers 1.00× their rate, tx p50 0.94×. At load 20, NOTIFY cost
// producers 0.16× of their rate. Probing keeps the producers' rate and costs them what the relay's CPU
// takes on two shared cores (their tx latency rises 2-3×, as it does with NOTIFY
// on top of the lock); neither meets a 20 ms p99 here. Logical replication
// (jackc/pglogrepl) as a wake-up was not measured.
//
// With the adaptive pace, same benchmark, one run, lines interleaved (load 1-7,
// 76-79% busy): commit→Kafka p50 / p99 18.1 / 90.6 and 35.2 / 150 ms (BusyInterval
// 1 ms) against 18.9 / 65.3 and 21.8 / 80.2 ms (5 ms), producers 1.00× either way:
// at 2,000 msgs/s the pace is not what limits. Its trace of each row (commit →
// publish call, the call, ack → read) shows where the time goes: commit → publish
// call p50 10-12 ms, of which the loop's previous publish is the largest part
// (a publish p50 is 6-9 ms: kafka-go's Writer sent one produce request per
// partition and kfake answers them one after another, so 8 partitions cost 8
// round trips; kafkapub now sends one per leader broker), then
// the claim (0.4-0.6 ms per call when the machine is not saturated, 5-22 ms when
// it is); ack → read is below a millisecond. At load 15, the adaptive pace gave
// 29.8 / 243 ms against 78.4 / 488 ms, producers 1.04× against 0.93× their rate.
// A relay pool of 8 connections instead of pgxpool's default 4, or one publish
// loop instead of two, did not help (124.8 / 1192 ms and 43.3 / 351 ms in that run).
//
// What the producers pay: BenchmarkRelayWakeup samples pg_stat_activity every 2 ms
// (every 10 ms since 2026-12-02: each look cost the server 0.5 ms)
// for the producers' INSERT and COMMIT. With or without a relay they wait for the
// WAL flush (LWLock:WALWrite, queueing behind another backend's flush, 66-80% of
// the samples; IO:WALSync 8-16%), and run or wait for a CPU in 6-12%; the relay
// adds no lock waits of its own (BufferContent and extend 1-2%). Its WAL is small
// beside theirs (pg_stat_statements: an INSERT of 1 KiB writes 1.3 KB, the settle
// about 57 B per row, a claim 85 B for pruning), so what producers lose with a
// relay running is the relay's share of the CPU and of the flushes, and it varies
// with what else the machine's disk is flushing: their tx p50 was 0.86-1.45× of
// the no-relay lines in runs at load 10-16 and 2.4-2.9× at load 1-7.
//
// Part of that was the benchmark's: its lines ran one after the other on
// databases of one server, each kept to the end, so every line found the shared
// buffers fuller of the earlier lines' dirty pages than the one before, and the
// no-relay baseline ran first: 1.59 ms tx p50 at the start of one run, 3.08 ms
// when repeated at its end. Each line now has a fresh database, dropped after it,
// and the server checkpoints before the next. A quiet run so (2026-12-02 01:12 UTC,
// load 1.5-8): the producers' tx p50 3.19 ms with no relay (2.90 ms again at the
// end), 3.37 ms with the default relay (1.11×, their rate 1.00×), commit→Kafka
// p50 5.5 ms, p99 77.8 ms; Workers 1 6.1 / 55.2 ms with tx p50 1.49×. The p99 is
// still the claims' and settles' wait for a CPU (commit → publish call p99
// 72 ms, the publish call's 10 ms).
//
// On a machine whose disk flushes faster (2026-12-02 04:20-04:55 UTC: producers'
// tx p50 0.55-0.87 ms with no relay) the relay's CPU shows more. Every relay line
// then cost the producers 2.1-8.8× tx p50 (rate 0.78-1.00×), and a process
// spinning on one core, with no relay at all, cost them 2.2× (1.58-1.86 ms against
// 0.69-0.87): what they pay is CPU time on the cores PostgreSQL runs on. The relay
// takes less of it than that spinner (its process 0.22-0.29 of a core, the machine
// 55-63% busy against 48%) but wakes every millisecond or two, each time ahead of
// a backend that may hold the WAL write lock. outbox-relay therefore lowers its
// own priority at start (--cpu-priority background: nice 10, SCHED_BATCH; package
// internal/cpuprio): in eight interleaved pairs at load 1-6, the producers' tx p50
// fell from 2.3-5.0× to 1.4-3.2× their baseline in all eight, and commit→Kafka p99
// from 22-60 to 16-44 ms in six. A relay built into a service (relay.New) leaves
// its process's priority alone. The benchmark's relay shares its session with
// PostgreSQL; nice ranks threads only within their session's autogroup and their
// cgroup, so a relay run as a systemd service or in a container needs its group's
// CPU weight lowered too (deploy/outbox-relay.service sets CPUWeight=20). Measured
// so (05:42-05:50 UTC, the machine quieter: the producers' baseline tx p99 1.0-2.0
// ms against 5-9 ms in the pairs above), the relay in a session of its own (setsid)
// cost the producers 1.36-1.57× tx p50 at the normal priority and 1.34-1.56× in the
// background (five pairs, no difference); in their session, 1.50-1.69× against
// 1.21-1.32× (two pairs). Every one of those 14 relay lines kept commit→Kafka p99
// at 5.9-9.1 ms, p50 1.2-1.8 ms, and the producers' rate at 1.00×.
//
// Overlapping publishes (MaxPublishes 2) need the connections for it: the
// benchmark's relay has pgxpool's default pool (4 on these cores), two loops with
// two batches under way each want 8, and commit→Kafka got worse in 5 of 6 runs.
// Six runs at load 7-16 (the machine 86-100% busy) with the relay's pool at 8
// (what outbox-relay sizes for it), MaxPublishes 2 against 1, p50 / p99:
// 35 / 211 against 60 / 452 ms, 81 / 838 against 78 / 561, 29 / 136 against
// 61 / 262, 26 / 85 against 20 / 61, 40 / 538 against 44 / 343, 26 / 117 against
// 69 / 321: p50 lower in four, p99 in three, noise larger than the difference.
// Its publishes take longer (p50 8.7-12.2 against 6.4-8.4 ms): kfake handles
// the requests of all connections in one loop, so publishes that overlap share
// its time. Runs with the default pool, lines interleaved (load
// 11-21, 100% busy; producers reached 1,090-1,650/s with no relay, so no line
// could meet 20 ms): commit→Kafka p50 / p99, and the relay process's CPU time for
// the 20,000 messages:
//
//	                                    run 1          run 2                run 3
//	1 publish per loop, Workers 2   121 / 688 ms   92.1 / 353 ms, 3.96 s   93.7 / 389 ms, 2.40 s
//	MaxPublishes 2, Workers 2       298 / 943 ms    168 / 707 ms, 2.59 s   66.4 / 328 ms, 3.58 s
//	1 publish per loop, Workers 1   117 / 591 ms   39.8 / 224 ms, 2.79 s   75.7 / 456 ms, 2.56 s
//	MaxPublishes 2, Workers 1      48.7 / 390 ms   84.1 / 759 ms, 3.50 s    143 / 760 ms, 2.77 s
//
// Workers 1 against 2, in those and four more runs: the claims' database time was
// 25-93% of two loops' in all seven, commit→Kafka p50 lower in six (23-117 against
// 29-121 ms), p99 lower in three. Workers stays 2: a second loop also doubles the
// publishes in flight, which is what a relay's rate under broker latency rests on
// (above, Several relays); relay ×1 drains of 100,000 rows on the plain broker
// gave Workers 1 0.53-2.3× Workers 2 (five pairs, load 9-14), no drop.
//
// MaxPublishes stays 1 until a quieter machine settles it.
//
// What the database spends on the relay at this rate is mostly its claims: a
// claim starts from the oldest pending row and steps over every row deleted since
// the table's last vacuum (up to the 20,000 of a run: autovacuum looks at most
// once a minute). Before the claim's per-row lookup of waiting rows went, that was
// 2-31 ms per claim on the loaded machine and 2.3-19 s of database time per 10 s
// run (the producers' 20,000 INSERTs took 4-9 s; on a quiet server, 20 live rows
// behind 20,000 deleted ones took 11.6 ms, 2,858 heap pages); since, about 100
// buffers and 0.8-2.7 ms per claim in nine runs of ten (13.7 in one), 1.6-9.6 s
// per run. A second publish loop runs its own claims over the same index range.
// Runs now start from their loop's floor, below which every row of its shards is
// settled (relay/floor.go: a clean run's last scanned seq, once every transaction
// open at its first claim has ended; while any pending row has failed before, the
// floor stays at 0, so no later row of its key passes its retry), and from the
// oldest row once per PollInterval: a claim's cost no longer grows with the
// time since the last vacuum, only the rows deleted while the xmin trails (about
// a producer transaction's length) remain to step over. Three interleaved pairs at
// load 7-12: 99, 70 and 140 buffers per claim before, 72, 57 and 66 after.

// # Residual ordering limits
//
// Kafka orders records per partition, so "per key" means per (topic, key). The
// relay holds a key back across topics while its head waits for a retry, but
// within one batch a key's messages to different topics are sent concurrently: if
// the one to topic A fails and the later one to topic B succeeds, B is out first.
// Likewise kafka-go splits a partition's records into requests of at most
// MaxMessageBytes; if an earlier request fails for good and a later one succeeds,
// the later records are out first (the failed ones are retried, and arrive late).
package relay
