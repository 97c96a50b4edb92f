// Package sagatest runs sagas end to end inside one test function: the orchestrator, the
// outbox relay and your participants against a real PostgreSQL database and Kafka-protocol
// brokers that you provide, all stopped when the test ends.
//
//	env := sagatest.Start(t, pool, brokers, sagatest.Config{
//		Orchestrator: sagastate.Config{Sagas: []sagastate.Definition{OrderSaga}},
//		Participants: []sagatest.Runner{inventory, payment},
//		Topics:       []string{"inventory.commands", "payment.commands"},
//	})
//	id := env.StartSaga(t, "order", Order{Amount: 10})
//	saga := env.Await(t, id, 30*time.Second) // completed, compensated or failed
//
// The database must have the sagabox migrations applied (migrations.Up).
package sagatest
