package embedkafka

import (
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Options configure a Cluster. The zero value is a usable default.
type Options struct {
	// Brokers is the number of brokers. Defaults to 1.
	Brokers int
	// Partitions is the partition count of auto-created topics. Defaults to 10.
	Partitions int
	// Ports pins the listen ports (one per broker), e.g. to restart a cluster on the
	// same addresses. Defaults to free ports.
	Ports []int
	// DataDir persists topics and offsets so a restarted cluster keeps them.
	// Defaults to memory only.
	DataDir string
	// NoAutoCreateTopics makes producing to an unknown topic fail, as a real Kafka
	// with auto.create.topics.enable=false does. Defaults to auto-creation on.
	NoAutoCreateTopics bool
}

// Cluster is a running in-process Kafka-protocol cluster.
type Cluster struct {
	c *kfake.Cluster
}

// Start starts a cluster listening on 127.0.0.1.
func Start(o Options) (*Cluster, error) {
	if o.Brokers == 0 {
		o.Brokers = 1
	}
	if o.Partitions == 0 {
		o.Partitions = 10
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(o.Brokers),
		kfake.DefaultNumPartitions(o.Partitions),
		// Consumer-group tests use short sessions; Kafka's 6 s minimum slows them.
		kfake.GroupMinSessionTimeout(100 * time.Millisecond),
	}
	if !o.NoAutoCreateTopics {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	if len(o.Ports) > 0 {
		opts = append(opts, kfake.Ports(o.Ports...))
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("embedkafka: start kfake cluster: %w", err)
	}
	return &Cluster{c: c}, nil
}

// Addrs returns the brokers' host:port addresses.
func (c *Cluster) Addrs() []string { return c.c.ListenAddrs() }

// Kfake exposes the underlying cluster for fault injection in tests.
func (c *Cluster) Kfake() *kfake.Cluster { return c.c }

// Close shuts the cluster down.
func (c *Cluster) Close() { c.c.Close() }
