package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/outbox"
)

// The bank-transfer flow is a choreography: no orchestrator, no saga state. Each
// service reacts to an event in its inbox transaction and emits the next event
// through the outbox in that same transaction:
//
//	Request ──transfer.requested──▶ Debit ──transfer.debited──▶ Credit ──transfer.credited──▶ Audit
//	                                  │  ▲                        │
//	                                  │  └──transfer.credit_failed┘  (compensate: refund the debit)
//	                                  ├──transfer.rejected (insufficient funds)──────────────▶ Audit
//	                                  └──transfer.reversed (after the refund)────────────────▶ Audit

// Event types of the transfer flow.
const (
	EvTransferRequested    = "transfer.requested"
	EvTransferDebited      = "transfer.debited"
	EvTransferCredited     = "transfer.credited"
	EvTransferCreditFailed = "transfer.credit_failed"
	EvTransferRejected     = "transfer.rejected"
	EvTransferReversed     = "transfer.reversed"
)

// HeaderEventType carries the event type next to the payload, for tools like kcat.
const HeaderEventType = "event-type"

// Final statuses of a transfer, set by the audit service.
const (
	TransferCompleted = "completed"
	TransferReversed  = "reversed"
	TransferRejected  = "rejected"
)

// Transfer moves Amount from Source to Target.
type Transfer struct {
	ID     uuid.UUID `json:"id"`
	Source string    `json:"source"`
	Target string    `json:"target"`
	Amount int64     `json:"amount"`
}

// TransferEvent is the payload of every message of the flow.
type TransferEvent struct {
	Type     string   `json:"type"`
	Transfer Transfer `json:"transfer"`
	Reason   string   `json:"reason,omitempty"`
}

// TransferTopics names the flow's topics. Zero fields take the defaults.
type TransferTopics struct {
	// Debits carries transfer.requested and transfer.credit_failed to the debit service.
	// Defaults to "bank.debits".
	Debits string
	// Credits carries transfer.debited to the credit service. Defaults to "bank.credits".
	Credits string
	// Audit carries the outcomes to the audit service. Defaults to "bank.audit".
	Audit string
}

// Bank runs the transfer flow's three services on one set of tables.
type Bank struct {
	s      *Services
	out    *outbox.Writer
	topics TransferTopics
}

// Bank returns the transfer flow's services, emitting events through out.
func (s *Services) Bank(out *outbox.Writer, topics TransferTopics) *Bank {
	if topics.Debits == "" {
		topics.Debits = "bank.debits"
	}
	if topics.Credits == "" {
		topics.Credits = "bank.credits"
	}
	if topics.Audit == "" {
		topics.Audit = "bank.audit"
	}
	return &Bank{s: s, out: out, topics: topics}
}

// Topics returns the topics in use, defaults applied.
func (b *Bank) Topics() TransferTopics { return b.topics }

// OpenAccounts creates (or resets) accounts with the given balances.
func (b *Bank) OpenAccounts(ctx context.Context, db Querier, balances map[string]int64, frozen ...string) error {
	for id, bal := range balances {
		if _, err := db.Exec(ctx, b.s.q["openAccount"], id, bal, false); err != nil {
			return fmt.Errorf("demo: open account %s: %w", id, err)
		}
	}
	for _, id := range frozen {
		if _, err := db.Exec(ctx, b.s.q["freezeAccount"], id); err != nil {
			return fmt.Errorf("demo: freeze account %s: %w", id, err)
		}
	}
	return nil
}

// Request records a transfer and emits transfer.requested, both in tx.
func (b *Bank) Request(ctx context.Context, tx pgx.Tx, t Transfer) error {
	var errs []error
	if t.ID == uuid.Nil {
		errs = append(errs, errors.New("id is empty"))
	}
	if t.Source == "" || t.Target == "" {
		errs = append(errs, errors.New("source and target accounts are required"))
	}
	if t.Source == t.Target {
		errs = append(errs, fmt.Errorf("source and target are both %q", t.Source))
	}
	if t.Amount <= 0 {
		errs = append(errs, fmt.Errorf("amount is %d; it must be positive", t.Amount))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: transfer: %w", ErrBadPayload, err)
	}
	if _, err := tx.Exec(ctx, b.s.q["insertTransfer"], t.ID, t.Source, t.Target, t.Amount); err != nil {
		return fmt.Errorf("request transfer %s: %w", t.ID, err)
	}
	return b.emit(ctx, tx, b.topics.Debits, TransferEvent{Type: EvTransferRequested, Transfer: t})
}

// DecodeTransferEvent reads an event from a record value.
func DecodeTransferEvent(value []byte) (TransferEvent, error) {
	var ev TransferEvent
	if err := json.Unmarshal(value, &ev); err != nil {
		return ev, fmt.Errorf("%w: transfer event: %v", ErrBadPayload, err)
	}
	if ev.Transfer.ID == uuid.Nil || ev.Type == "" {
		return ev, fmt.Errorf("%w: transfer event without type or transfer id", ErrBadPayload)
	}
	return ev, nil
}

func (b *Bank) emit(ctx context.Context, tx pgx.Tx, topic string, ev TransferEvent) error {
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return b.out.Enqueue(ctx, tx, outbox.Message{
		Topic: topic, Key: ev.Transfer.ID.String(), Payload: payload,
		Headers: map[string]string{HeaderEventType: ev.Type},
	})
}

func (b *Bank) setStatus(ctx context.Context, tx pgx.Tx, id uuid.UUID, status, reason string) error {
	_, err := tx.Exec(ctx, b.s.q["setTransferStatus"], id, status, reason)
	return err
}

// Debit handles the debit service's events: it takes the money from the source
// (or rejects the transfer) and, on transfer.credit_failed, refunds it.
func (b *Bank) Debit(ctx context.Context, tx pgx.Tx, ev TransferEvent) error {
	t := ev.Transfer
	switch ev.Type {
	case EvTransferRequested:
		var left int64
		err := tx.QueryRow(ctx, b.s.q["takeMoney"], t.Source, t.Amount).Scan(&left)
		if errors.Is(err, pgx.ErrNoRows) {
			reason := fmt.Sprintf("insufficient funds in %s for %d", t.Source, t.Amount)
			var exists bool
			if err := tx.QueryRow(ctx, b.s.q["accountExists"], t.Source).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				reason = fmt.Sprintf("source account %s does not exist", t.Source)
			}
			if err := b.setStatus(ctx, tx, t.ID, "rejected", reason); err != nil {
				return err
			}
			return b.emit(ctx, tx, b.topics.Audit, TransferEvent{Type: EvTransferRejected, Transfer: t, Reason: reason})
		}
		if err != nil {
			return fmt.Errorf("debit %s: %w", t.ID, err)
		}
		if _, err := tx.Exec(ctx, b.s.q["ledger"], t.ID, "debit", t.Source, t.Amount); err != nil {
			return fmt.Errorf("debit %s: %w", t.ID, err)
		}
		if err := b.setStatus(ctx, tx, t.ID, "debited", ""); err != nil {
			return err
		}
		return b.emit(ctx, tx, b.topics.Credits, TransferEvent{Type: EvTransferDebited, Transfer: t})
	case EvTransferCreditFailed:
		// The compensation: give the source its money back, once.
		if _, err := tx.Exec(ctx, b.s.q["ledger"], t.ID, "refund", t.Source, t.Amount); err != nil {
			return fmt.Errorf("refund %s: %w", t.ID, err)
		}
		if _, err := tx.Exec(ctx, b.s.q["giveMoney"], t.Source, t.Amount); err != nil {
			return fmt.Errorf("refund %s: %w", t.ID, err)
		}
		return b.emit(ctx, tx, b.topics.Audit, TransferEvent{Type: EvTransferReversed, Transfer: t, Reason: ev.Reason})
	}
	return fmt.Errorf("%w: debit service got event %q", ErrBadPayload, ev.Type)
}

// Credit handles transfer.debited: it credits the target or, when the target cannot
// take it (missing or frozen), emits transfer.credit_failed so the debit is compensated.
func (b *Bank) Credit(ctx context.Context, tx pgx.Tx, ev TransferEvent) error {
	t := ev.Transfer
	if ev.Type != EvTransferDebited {
		return fmt.Errorf("%w: credit service got event %q", ErrBadPayload, ev.Type)
	}
	tag, err := tx.Exec(ctx, b.s.q["creditMoney"], t.Target, t.Amount)
	if err != nil {
		return fmt.Errorf("credit %s: %w", t.ID, err)
	}
	if tag.RowsAffected() == 0 {
		reason := fmt.Sprintf("target account %s does not exist or is frozen", t.Target)
		if err := b.setStatus(ctx, tx, t.ID, "credit_failed", reason); err != nil {
			return err
		}
		return b.emit(ctx, tx, b.topics.Debits, TransferEvent{Type: EvTransferCreditFailed, Transfer: t, Reason: reason})
	}
	if _, err := tx.Exec(ctx, b.s.q["ledger"], t.ID, "credit", t.Target, t.Amount); err != nil {
		return fmt.Errorf("credit %s: %w", t.ID, err)
	}
	if err := b.setStatus(ctx, tx, t.ID, "credited", ""); err != nil {
		return err
	}
	return b.emit(ctx, tx, b.topics.Audit, TransferEvent{Type: EvTransferCredited, Transfer: t})
}

// Audit records each transfer's outcome once and settles its status.
func (b *Bank) Audit(ctx context.Context, tx pgx.Tx, ev TransferEvent) error {
	var status string
	switch ev.Type {
	case EvTransferCredited:
		status = TransferCompleted
	case EvTransferReversed:
		status = TransferReversed
	case EvTransferRejected:
		status = TransferRejected
	default:
		return fmt.Errorf("%w: audit service got event %q", ErrBadPayload, ev.Type)
	}
	if _, err := tx.Exec(ctx, b.s.q["audit"], ev.Transfer.ID, status, ev.Reason); err != nil {
		return fmt.Errorf("audit %s: %w", ev.Transfer.ID, err)
	}
	return b.setStatus(ctx, tx, ev.Transfer.ID, status, ev.Reason)
}

func init() {
	for k, v := range map[string]string{
		"openAccount": `INSERT INTO {accounts} ("id", "balance", "frozen") VALUES ($1, $2, $3)
			ON CONFLICT ("id") DO UPDATE SET "balance" = EXCLUDED."balance", "frozen" = EXCLUDED."frozen"`,
		"freezeAccount":  `UPDATE {accounts} SET "frozen" = true WHERE "id" = $1`,
		"insertTransfer": `INSERT INTO {transfers} ("id", "source", "target", "amount", "status") VALUES ($1, $2, $3, $4, 'requested')`,
		"setTransferStatus": `UPDATE {transfers} SET "status" = $2, "reason" = $3, "updated_at" = clock_timestamp()
			WHERE "id" = $1`,
		"takeMoney": `UPDATE {accounts} SET "balance" = "balance" - $2
			WHERE "id" = $1 AND "balance" >= $2 RETURNING "balance"`,
		"giveMoney":     `UPDATE {accounts} SET "balance" = "balance" + $2 WHERE "id" = $1`,
		"creditMoney":   `UPDATE {accounts} SET "balance" = "balance" + $2 WHERE "id" = $1 AND NOT "frozen"`,
		"accountExists": `SELECT EXISTS (SELECT 1 FROM {accounts} WHERE "id" = $1)`,
		// No ON CONFLICT: a second debit, credit or refund of one transfer is a bug the
		// inbox should have prevented, and failing loudly beats moving money twice.
		"ledger": `INSERT INTO {ledger} ("transfer_id", "kind", "account", "amount") VALUES ($1, $2, $3, $4)`,
		"audit":  `INSERT INTO {audit} ("transfer_id", "outcome", "detail") VALUES ($1, $2, $3)`,
	} {
		queries[k] = v
	}
}

// Consumers returns the flow's three services as inbox consumers, each its own
// consumer group: debit (on Debits), credit (on Credits) and audit (on Audit). base
// supplies Brokers, Schema, tuning and Logger; GroupID, Topics and Name are set here.
// Each event is handled exactly once: the consumer records its message id in the
// transaction that moves the money and emits the next event.
func (b *Bank) Consumers(pool *pgxpool.Pool, base consumer.Config) ([]*consumer.Consumer, error) {
	var out []*consumer.Consumer
	for _, svc := range []struct {
		group, topic string
		handle       func(context.Context, pgx.Tx, TransferEvent) error
	}{
		{"bank-debit", b.topics.Debits, b.Debit},
		{"bank-credit", b.topics.Credits, b.Credit},
		{"bank-audit", b.topics.Audit, b.Audit},
	} {
		cfg := base
		cfg.GroupID, cfg.Topics, cfg.Name = svc.group, []string{svc.topic}, ""
		handle := svc.handle
		c, err := consumer.New(pool, cfg, func(ctx context.Context, tx pgx.Tx, msg consumer.Message) error {
			ev, err := DecodeTransferEvent(msg.Value)
			if err != nil {
				return consumer.Permanent(err)
			}
			if err := handle(ctx, tx, ev); err != nil {
				if errors.Is(err, ErrBadPayload) {
					return consumer.Permanent(err)
				}
				return err
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("demo: %s consumer: %w", svc.group, err)
		}
		out = append(out, c)
	}
	return out, nil
}
