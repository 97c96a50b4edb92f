package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// kafka-go's connection pool and its Reader's background fetch live on after Close.
		goleak.IgnoreTopFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
		goleak.IgnoreTopFunction("github.com/segmentio/kafka-go/protocol.(*Conn).Close"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
	)
}

// startBroker runs the command in-process until stop is called, and returns the addresses
// it printed.
func startBroker(t *testing.T, args ...string) (addrs []string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := run(ctx, args, pw, io.Discard)
		pw.Close()
		errc <- err
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	t.Cleanup(stop)
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		if sc.Text() == "kafkabroker ready" {
			go func() { _, _ = io.Copy(io.Discard, pr) }() // drain the shutdown line
			return addrs, stop
		}
		addrs = append(addrs, sc.Text())
	}
	cancel()
	t.Fatalf("the broker ended before it was ready: %v", <-errc)
	return nil, nil
}

func TestBrokerAdvertisesTheConfiguredHost(t *testing.T) {
	t.Parallel()
	addrs, _ := startBroker(t, "-listen", "0.0.0.0", "-advertise", "localhost", "-ports", "0,0", "-log-level", "none")
	if len(addrs) != 2 {
		t.Fatalf("printed addresses %v; want one per port", addrs)
	}
	for _, a := range addrs {
		if host, _, _ := net.SplitHostPort(a); host != "localhost" {
			t.Errorf("printed %s; want the advertised host localhost", a)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := (&kafka.Client{Addr: kafka.TCP(addrs[0])}).Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	var got []string
	for _, b := range md.Brokers {
		got = append(got, net.JoinHostPort(b.Host, strconv.Itoa(b.Port)))
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(addrs))
	if !slices.Equal(got, want) {
		t.Errorf("metadata advertises %v; want %v", got, want)
	}
}

// TestDataDirKeepsTheLogAcrossRestart: what was acknowledged before a stop is read back
// after a start on the same data directory and port.
func TestDataDirKeepsTheLogAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addrs, stop := startBroker(t, "-ports", "0", "-data-dir", dir, "-partitions", "1", "-log-level", "none")
	_, port, _ := net.SplitHostPort(addrs[0])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w := &kafka.Writer{Addr: kafka.TCP(addrs[0]), Topic: "t", RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, AllowAutoTopicCreation: true}
	var sent []kafka.Message
	for i := range 20 {
		sent = append(sent, kafka.Message{Key: []byte("k"), Value: []byte(strconv.Itoa(i))})
	}
	if err := w.WriteMessages(ctx, sent...); err != nil {
		t.Fatalf("produce: %v", err)
	}
	w.Close()
	stop()

	addrs, _ = startBroker(t, "-ports", port, "-data-dir", dir, "-partitions", "1", "-log-level", "none")
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: "t", Partition: 0, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	var got []string
	for range sent {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read after restart, %d messages so far: %v", len(got), err)
		}
		got = append(got, string(m.Value))
	}
	if len(got) != len(sent) {
		t.Fatalf("read %d messages after the restart (%v); want the %d acknowledged before it", len(got), got, len(sent))
	}
	for i, v := range got {
		if v != strconv.Itoa(i) {
			t.Fatalf("message %d is %q after the restart; want %q (order kept)", i, v, strconv.Itoa(i))
		}
	}
}

func TestBadFlagsAreRejectedWithTheFix(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"PortNotANumber":   {[]string{"-ports", "9092,x"}, []string{`"x" is not a port number`}},
		"SyncWithoutData":  {[]string{"-sync"}, []string{"-sync needs -data-dir"}},
		"SeveralAtOnce":    {[]string{"-partitions", "0", "-log-level", "loud"}, []string{"-partitions is 0", `-log-level "loud" is unknown`}},
		"ListenNotAnIP":    {[]string{"-listen", "example.com"}, []string{"is not an IP address"}},
		"StrayArgument":    {[]string{"9092"}, []string{"every setting is a flag"}},
		"NegativeSessions": {[]string{"-group-min-session-timeout", "-1s"}, []string{"must be positive"}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := run(context.Background(), tc.args, io.Discard, io.Discard)
			if err == nil {
				t.Fatalf("run(%q) started a broker; want an error", tc.args)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// kafkabroker --help used to print flag's bare default usage to stderr and exit 2.
func TestHelpAndVersionPrintToStdoutAndSucceed(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"Help":    {[]string{"--help"}, "Usage: kafkabroker [flags]"},
		"Version": {[]string{"--version"}, "kafkabroker "},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var out strings.Builder
			_, err := parse(tc.args, &out)
			if err != nil && !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errVersion) {
				t.Fatalf("parse(%q): %v", tc.args, err)
			}
			if !strings.HasPrefix(out.String(), tc.want) && !strings.Contains(out.String(), "\n"+tc.want) {
				t.Fatalf("%q printed %q; want it to contain %q", tc.args, out.String(), tc.want)
			}
		})
	}
}
