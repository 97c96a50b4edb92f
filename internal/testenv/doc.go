// Package testenv gives tests a real PostgreSQL database and a real Kafka-protocol
// broker with no setup by hand.
//
// PostgreSQL: SAGABOX_TEST_DATABASE_URL names a server (the role needs CREATEDB);
// otherwise a throwaway cluster is started from the local binaries once per test
// binary. Either way each test gets a database of its own, created from a migrated
// template and dropped when the test ends.
//
// Kafka: SAGABOX_TEST_KAFKA_BROKERS (comma-separated) names a cluster; otherwise each
// test gets an in-process kfake cluster of its own. Use Topic for names, so tests
// sharing a real cluster never share a topic.
//
// SAGABOX_TEST_QUERY_EXEC_MODE sets pgx's default_query_exec_mode in every database
// URL handed out (make test-modes runs the core packages in exec and simple_protocol,
// the modes a pool behind PgBouncer in transaction mode uses).
//
// Call Run from TestMain so the throwaway servers stop when the tests end.
package testenv
