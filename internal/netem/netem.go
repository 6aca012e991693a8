// Package netem is an emulated network for benchmarks: a TCP proxy on
// loopback that delays each direction by a fixed latency. The kernel here
// has no netem qdisc, so the delay lives in user space. Each direction has
// a reader that timestamps every chunk it reads and a writer that releases
// the chunk once its delay has passed, so the proxy adds latency and keeps
// bandwidth: chunks read while earlier ones wait are not delayed again.
package netem

import (
	"net"
	"runtime"
	"sync"
	"time"
)

// Proxy forwards connections from its loopback address to a target
// address, delaying each direction by Delay.
type Proxy struct {
	// Delay is the one-way latency added to each direction.
	Delay time.Duration
	// Tap, when set, is called for each accepted connection and returns a
	// function that sees the bytes the client sends, in order, chunk by
	// chunk, before they are delayed (tests count protocol messages with
	// it). The returned function is called from one goroutine.
	Tap func() func([]byte)

	target string
	ln     net.Listener
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// Start listens on 127.0.0.1 on a free port and forwards each connection to
// target (host:port) with delay each way. It returns an error when it
// cannot listen.
func Start(target string, delay time.Duration) (*Proxy, error) {
	return StartTap(target, delay, nil)
}

// StartTap is Start with a Tap set before the first connection arrives.
func StartTap(target string, delay time.Duration, tap func() func([]byte)) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{Delay: delay, Tap: tap, target: target, ln: ln, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Port returns the proxy's port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Close stops accepting, closes every proxied connection and waits for the
// proxy's goroutines. It returns the listener's close error.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	for _, c := range []net.Conn{client, server} {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	var tap func([]byte)
	if p.Tap != nil {
		tap = p.Tap()
	}
	done := make(chan struct{}, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client, tap); done <- struct{}{} }()
	go func() { defer wg.Done(); p.pipe(client, server, nil); done <- struct{}{} }()
	<-done // one direction ended: end the other
	_ = client.Close()
	_ = server.Close()
	wg.Wait()
}

// chunk is bytes read at one time, due at another.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk delayed by p.Delay after it was read.
func (p *Proxy) pipe(dst, src net.Conn, tap func([]byte)) {
	q := make(chan chunk, 4096)
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		t := time.NewTimer(0)
		<-t.C
		for c := range q {
			wait(t, c.due)
			if _, err := dst.Write(c.b); err != nil {
				_ = src.Close()
				for range q { // let the reader finish
				}
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			now := time.Now()
			b := append([]byte(nil), buf[:n]...)
			if tap != nil {
				tap(b)
			}
			q <- chunk{b: b, due: now.Add(p.Delay)}
		}
		if err != nil { // EOF, closed or reset: this direction is over
			break
		}
	}
	close(q)
	<-wrote
}

// spinBelow is the wait under which the writer yields in a loop instead of
// sleeping on a timer: on a loaded machine a timer's wake-up comes
// milliseconds late (measured: 0.05 ms asked, about 1.5 ms got at load 12
// on 2 cores), which would swamp the latency being emulated. Yielding keeps
// the goroutine runnable at the cost of the CPU it spins.
const spinBelow = time.Millisecond

// wait returns at due: sleeping on t until spinBelow before it, then
// yielding until it has passed.
func wait(t *time.Timer, due time.Time) {
	d := time.Until(due)
	if d > spinBelow {
		t.Reset(d - spinBelow)
		<-t.C
	}
	for time.Now().Before(due) {
		runtime.Gosched()
	}
}
