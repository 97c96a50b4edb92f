package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key as PEM files.
func writeCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestPublisherConfig(t *testing.T) {
	t.Parallel()
	cert, key := writeCert(t)

	t.Run("MutualTLSAndSCRAM", func(t *testing.T) {
		t.Parallel()
		o := options{brokers: " a:9093, b:9093 ", tls: true, tlsCA: cert, tlsCert: cert, tlsKey: key,
			saslMechanism: "scram-sha-512", saslUser: "relay", saslPassword: "pw", maxMessageBytes: 2048}
		cfg, err := o.publisherConfig()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(cfg.Brokers, ",") != "a:9093,b:9093" {
			t.Errorf("brokers %v", cfg.Brokers)
		}
		if cfg.TLS == nil || cfg.TLS.RootCAs == nil || len(cfg.TLS.Certificates) != 1 || cfg.TLS.InsecureSkipVerify {
			t.Errorf("TLS config %+v: want the CA, the client certificate, verification on", cfg.TLS)
		}
		if cfg.SASL == nil || cfg.SASL.Name() != "SCRAM-SHA-512" {
			t.Errorf("SASL mechanism %v, want SCRAM-SHA-512", cfg.SASL)
		}
		if cfg.MaxMessageBytes != 2048 {
			t.Errorf("MaxMessageBytes %d", cfg.MaxMessageBytes)
		}
	})

	t.Run("PlainWithoutTLS", func(t *testing.T) {
		t.Parallel()
		o := options{brokers: "a:9092", saslMechanism: "PLAIN", saslUser: "u", saslPassword: "p"}
		cfg, err := o.publisherConfig()
		if err != nil || cfg.TLS != nil || cfg.SASL == nil || cfg.SASL.Name() != "PLAIN" {
			t.Fatalf("cfg %+v, err %v: want PLAIN without TLS", cfg, err)
		}
	})

	t.Run("UnreadableCA", func(t *testing.T) {
		t.Parallel()
		o := options{brokers: "a:9093", tls: true, tlsCA: filepath.Join(t.TempDir(), "missing.pem")}
		if _, err := o.publisherConfig(); err == nil || !strings.Contains(err.Error(), "--kafka-tls-ca") {
			t.Fatalf("err = %v, want one naming --kafka-tls-ca", err)
		}
	})

	t.Run("NotAPEMFile", func(t *testing.T) {
		t.Parallel()
		o := options{brokers: "a:9093", tlsCA: key} // a key, not a certificate
		if _, err := o.publisherConfig(); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
			t.Fatalf("err = %v, want a no-certificate error", err)
		}
	})
}
