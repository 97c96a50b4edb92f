package kafkapub_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagabox/sagabox/outbox"
	"github.com/sagabox/sagabox/relay"
	"github.com/sagabox/sagabox/relay/kafkapub"
)

// TestBrokerAuthFailuresAreTheBrokersFault: a rejected SASL login and a refused
// authorization concern every message alike (say, after a credential rotation).
// They must fail the batch as a whole with ErrUnavailable, which spends no
// message's attempt, not as per-message errors that dead-letter the outbox.
func TestBrokerAuthFailuresAreTheBrokersFault(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, p *kafkapub.Publisher) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		err := p.Publish(ctx, []outbox.Message{msg("auth", "k", "v"), msg("auth", "j", "w")})
		var me relay.MessageErrors
		if !errors.Is(err, relay.ErrUnavailable) || !errors.Is(err, kafkapub.ErrBrokerAuth) || errors.As(err, &me) {
			t.Fatalf("err = %v; want one ErrUnavailable and ErrBrokerAuth for the whole batch", err)
		}
		if err := p.Health(ctx); !errors.Is(err, kafkapub.ErrBrokerAuth) {
			t.Fatalf("Health = %v; want the broker's refusal", err)
		}
	}

	t.Run("WrongSASLPassword", func(t *testing.T) {
		t.Parallel()
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "auth"), kfake.EnableSASL(), kfake.Superuser("PLAIN", "relay", "right"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		// kfake just hangs up on a wrong password; a real broker answers first, as here.
		c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			resp := req.(*kmsg.SASLAuthenticateRequest).ResponseKind().(*kmsg.SASLAuthenticateResponse)
			resp.ErrorCode = 58 // SASL_AUTHENTICATION_FAILED
			resp.ErrorMessage = new("Authentication failed: Invalid username or password")
			return resp, nil, true
		})
		check(t, newPub(t, kafkapub.Config{Brokers: c.ListenAddrs(), SASL: plain.Mechanism{Username: "relay", Password: "rotated"}}))
	})

	t.Run("TopicAuthorizationFailed", func(t *testing.T) {
		t.Parallel()
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "auth"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			return produceError(req.(*kmsg.ProduceRequest), 29), nil, true // TOPIC_AUTHORIZATION_FAILED
		})
		check(t, newPub(t, kafkapub.Config{Brokers: c.ListenAddrs()}))
	})
}
