// Command kafkabroker runs a Kafka-protocol broker (franz-go's kfake) as a process of its
// own: a local Kafka for developers, and the binary of the FROM-scratch broker image the
// integration suite runs on where no Kafka image can be pulled (scripts/build-images.sh).
//
//	kafkabroker                                   # one broker on 127.0.0.1:9092
//	kafkabroker -listen 0.0.0.0 -advertise localhost -ports 39092 -data-dir /data
//
// Guarantee: it speaks the Kafka wire protocol well enough for kafka-go, franz-go and kcat
// (produce with acks=all, fetch, consumer groups, offsets, admin), but it is a test broker:
// lenient where a real Kafka is strict, single process, no replication. With -data-dir the
// log, topics and committed offsets survive a restart (written through the page cache;
// -sync fsyncs every write); without it everything lives in memory.
//
// Clients learn broker addresses from metadata, so the advertised host:port must be
// reachable by them. In a container, publish each port 1:1 (-p 39092:39092) and advertise
// the host name clients use (-advertise localhost): the broker listens on -listen:port and
// advertises -advertise:port.
package main
