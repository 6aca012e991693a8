package netem

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// echo starts a TCP echo server and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// TestProxyDelaysAndKeepsBytes sends 1 MB through an echo server behind the
// proxy: every byte comes back in order, a round trip takes at least twice
// the delay, and the tap sees what the client sent.
func TestProxyDelaysAndKeepsBytes(t *testing.T) {
	const delay = 20 * time.Millisecond
	var tapped atomic.Int64
	p, err := StartTap(echo(t), delay, func() func([]byte) {
		return func(b []byte) { tapped.Add(int64(len(b))) }
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("got %q, %v", got, err)
	}
	if rt := time.Since(start); rt < 2*delay {
		t.Errorf("round trip %v, want at least %v", rt, 2*delay)
	}

	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	go func() { _, _ = c.Write(data) }()
	back := make([]byte, len(data))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Error("bytes came back changed or out of order")
	}
	if n := tapped.Load(); n != int64(len(data)+4) {
		t.Errorf("tap saw %d bytes, want %d", n, len(data)+4)
	}
}

// TestProxyClose ends open connections and refuses new ones.
func TestProxyClose(t *testing.T) {
	p, err := Start(echo(t), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("read on a closed proxy's connection succeeded")
	}
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		c2.Close()
		t.Error("closed proxy accepted a connection")
	}
}
