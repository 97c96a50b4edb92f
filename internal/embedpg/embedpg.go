package embedpg

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// BinDirs are searched in order for initdb and postgres when they are not on PATH.
var BinDirs = []string{
	"/usr/lib/postgresql/17/bin",
	"/usr/lib/postgresql/16/bin",
	"/usr/lib/postgresql/15/bin",
	"/usr/local/pgsql/bin",
}

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	dir      string
	settings []string
	binDir   string
	port     int
	cred     *syscall.Credential
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	logFile  *os.File
}

// Start initialises a new cluster in a temporary directory and starts it.
// As root, initdb and postgres run as the "postgres" OS user, since they refuse to run as root.
// settings ("name=value") override the test defaults (fsync=off and the like),
// e.g. "fsync=on" for a benchmark that must pay for durable commits.
func Start(ctx context.Context, settings ...string) (*Cluster, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: binDir, settings: settings}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("embedpg: running as root needs a \"postgres\" OS user to run the server: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	c.dir, err = os.MkdirTemp("", "sagabox-pg-")
	if err != nil {
		return nil, fmt.Errorf("embedpg: %w", err)
	}
	if err := c.chown(c.dir); err != nil {
		c.removeDir()
		return nil, err
	}
	initdb := c.command(ctx, "initdb", "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", c.dataDir())
	if out, err := initdb.CombinedOutput(); err != nil {
		c.removeDir()
		return nil, fmt.Errorf("embedpg: initdb: %w\n%s", err, out)
	}
	if err := c.Restart(ctx); err != nil {
		c.removeDir()
		return nil, err
	}
	return c, nil
}

// URL returns a connection string for database name on this cluster.
func (c *Cluster) URL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, database)
}

// Port returns the TCP port the cluster listens on.
func (c *Cluster) Port() int { return c.port }

// Restart starts the server if it is stopped, keeping its data and port.
func (c *Cluster) Restart(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return nil
	}
	if c.port == 0 {
		port, err := freePort()
		if err != nil {
			return err
		}
		c.port = port
	}
	logFile, err := os.OpenFile(filepath.Join(c.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("embedpg: %w", err)
	}
	args := []string{
		"-D", c.dataDir(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port=" + strconv.Itoa(c.port),
		"-c", "unix_socket_directories=" + c.dir,
		"-c", "fsync=off",
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "max_connections=500",
		"-c", "shared_buffers=256MB",
	}
	for _, s := range c.settings {
		args = append(args, "-c", s) // a later -c wins
	}
	cmd := c.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The server dies with the process that started it, even on kill -9.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("embedpg: start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.cmd, c.exited, c.logFile = cmd, exited, logFile

	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			c.cmd = nil
			logFile.Close()
			log, _ := os.ReadFile(logFile.Name())
			return fmt.Errorf("embedpg: postgres exited during start-up:\n%s", log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("embedpg: postgres did not accept connections within 30s: %w", err)
		}
	}
}

// Stop shuts the server down (fast shutdown: open sessions are cut) and keeps its data.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
	c.logFile.Close()
	return nil
}

// Close stops the server and removes its data directory.
func (c *Cluster) Close() error {
	err := c.Stop()
	c.removeDir()
	return err
}

func (c *Cluster) dataDir() string { return filepath.Join(c.dir, "data") }

func (c *Cluster) removeDir() { _ = os.RemoveAll(c.dir) }

func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("embedpg: %w", err)
	}
	return nil
}

func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func findBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	for _, dir := range BinDirs {
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("embedpg: no PostgreSQL binaries found (looked on PATH and in " +
		strings.Join(BinDirs, ", ") + "); install PostgreSQL or set DATABASE_URL to a running server")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("embedpg: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
