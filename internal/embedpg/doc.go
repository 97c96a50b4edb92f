// Package embedpg starts a throwaway PostgreSQL cluster from the local
// binaries, for tests and the demo when no DATABASE_URL is given.
//
// The cluster lives in a temporary directory, listens on 127.0.0.1 on a free
// port, trusts every local connection and is removed by Close. It runs with
// fsync and synchronous_commit off: fast, and never durable.
package embedpg
