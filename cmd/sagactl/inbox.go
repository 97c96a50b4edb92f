package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagabox/sagabox/inbox"
	"github.com/sagabox/sagabox/inbox/consumer"
	"github.com/sagabox/sagabox/internal/textfmt"
)

func init() {
	register(&command{
		name: "inbox list", summary: "List the inbox dead letters (messages a consumer gave up on) with their reason and headers.",
		run: inboxList,
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.StringVar(&o.ops.consumer, "consumer", "", "only this consumer's dead letters")
			fs.IntVar(&o.limit, "limit", 50, "at most this many dead letters")
		},
	})
	register(&command{
		name: "inbox replay", args: "[ID...]", npos: -1,
		summary: "Put inbox dead letters back on their topic so their consumer handles them again (give ids, or --all).",
		run:     inboxReplay,
		flags: func(fs *flag.FlagSet, o *opts) {
			fs.BoolVar(&o.all, "all", false, "replay every dead letter (of --consumer, if given)")
			fs.StringVar(&o.ops.consumer, "consumer", "", "with --all: only this consumer's dead letters")
		},
	})
}

type inboxDeadJSON struct {
	ID        int64             `json:"id"`
	Consumer  string            `json:"consumer"`
	MessageID string            `json:"message_id,omitempty"`
	Topic     string            `json:"topic"`
	Partition int               `json:"partition"`
	Offset    int64             `json:"offset"`
	Headers   map[string]string `json:"headers,omitempty"`
	Bytes     int               `json:"value_bytes"`
	Attempts  int               `json:"attempts"`
	Reason    string            `json:"reason"`
	DeadAt    string            `json:"dead_at"`
}

func inboxList(ctx context.Context, a *app, o *opts, _ []string) error {
	if o.limit < 1 {
		return errors.New("inbox list: --limit must be at least 1")
	}
	store, err := inbox.NewStore(o.schema)
	if err != nil {
		return err
	}
	pool, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	dead, err := store.ListDeadLetters(ctx, pool, o.ops.consumer, o.limit)
	if err != nil {
		return explainMissing(err, o.schema)
	}
	if o.json {
		out := make([]inboxDeadJSON, 0, len(dead))
		for _, d := range dead {
			j := inboxDeadJSON{ID: d.ID, Consumer: d.Consumer, Topic: d.Topic, Partition: d.Partition, Offset: d.Offset, Headers: d.Headers,
				Bytes: len(d.Value), Attempts: d.Attempts, Reason: d.Reason, DeadAt: d.DeadAt.UTC().Format(jsonTime)}
			if d.MessageID != uuid.Nil {
				j.MessageID = d.MessageID.String()
			}
			out = append(out, j)
		}
		return a.printJSON(map[string]any{"schema": o.schema, "dead_letters": out})
	}
	if len(dead) == 0 {
		fmt.Fprintln(a.stdout, "no inbox dead letters")
		return nil
	}
	rows := make([][]string, 0, len(dead))
	for _, d := range dead {
		msg := "-"
		if d.MessageID != uuid.Nil {
			msg = d.MessageID.String()
		}
		rows = append(rows, []string{strconv.FormatInt(d.ID, 10), d.Consumer, fmt.Sprintf("%s/%d@%d", d.Topic, d.Partition, d.Offset), msg,
			strconv.Itoa(d.Attempts), textfmt.Time(d.DeadAt, "-"), oneLine(d.Reason, 70), oneLine(headerList(d.Headers), 60)})
	}
	a.table([]string{"ID", "CONSUMER", "FROM", "MESSAGE ID", "ATTEMPTS", "DEAD AT", "REASON", "HEADERS"}, rows)
	if len(dead) == o.limit {
		fmt.Fprintf(a.stdout, "(first %d; --limit for more)\n", o.limit)
	}
	fmt.Fprintln(a.stdout, "Fix the cause, then: sagactl inbox replay ID... (or --all)")
	return nil
}

func headerList(h map[string]string) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + h[k]
	}
	return strings.Join(parts, " ")
}

func inboxReplay(ctx context.Context, a *app, o *opts, pos []string) error {
	if len(pos) == 0 && !o.all {
		return errors.New("inbox replay: name the dead letters to replay (ids from 'sagactl inbox list') or pass --all")
	}
	if len(pos) > 0 && o.all {
		return errors.New("inbox replay: give ids or --all, not both")
	}
	if o.ops.consumer != "" && !o.all {
		return errors.New("inbox replay: --consumer goes with --all; ids name their dead letters already")
	}
	var ids []int64
	for _, p := range pos {
		id, err := strconv.ParseInt(p, 10, 64)
		if err != nil || id < 1 {
			return fmt.Errorf("inbox replay: %q is not a dead letter id (want a number as listed by 'sagactl inbox list')", p)
		}
		ids = append(ids, id)
	}
	store, err := inbox.NewStore(o.schema)
	if err != nil {
		return err
	}
	pool, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer pool.Close()
	var replayed []uuid.UUID
	// All or nothing: an unknown id replays none.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if o.all {
			dead, err := store.ListDeadLetters(ctx, tx, o.ops.consumer, 1000)
			if err != nil {
				return err
			}
			for _, d := range dead {
				ids = append(ids, d.ID)
			}
		}
		for _, id := range ids {
			msg, err := consumer.Replay(ctx, tx, o.schema, id)
			if errors.Is(err, inbox.ErrNotFound) {
				return fmt.Errorf("inbox replay: nothing replayed: no dead letter %d (already replayed, or a wrong id? see 'sagactl inbox list')", id)
			}
			if err != nil {
				return err
			}
			replayed = append(replayed, msg)
		}
		return nil
	})
	if err != nil {
		return explainMissing(err, o.schema)
	}
	if o.json {
		return a.printJSON(map[string]any{"schema": o.schema, "replayed": len(replayed), "message_ids": replayed})
	}
	fmt.Fprintf(a.stdout, "%d dead letter(s) put back through the outbox; their consumers handle them again once the relay publishes them\n", len(replayed))
	if o.all && len(replayed) == 1000 {
		fmt.Fprintln(a.stdout, "(at most 1000 at a time; run it again for the rest)")
	}
	return nil
}
