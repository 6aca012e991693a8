package hv

import "sync"

// maxIdleWorkers is how many fan-out workers a Connector keeps between
// fan-outs.
const maxIdleWorkers = 64

// workers runs fan-out shard work on goroutines kept between fan-outs. A
// new goroutine starts on a small stack that grows by copying as the
// statement descends through pgconn; for a point fan-out over 16 shards
// that copying was an eighth of the client's CPU. A kept worker has grown
// its stack already. At most maxIdleWorkers wait; the rest end.
type workers struct {
	mu     sync.Mutex
	idle   []chan func()
	closed bool
}

// run calls fn on an idle worker, or on a new one.
func (w *workers) run(fn func()) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		ch := w.idle[n-1]
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		ch <- fn // buffered: never blocks
		return
	}
	w.mu.Unlock()
	ch := make(chan func(), 1)
	ch <- fn
	go w.loop(ch)
}

func (w *workers) loop(ch chan func()) {
	for fn := range ch {
		fn()
		if !w.park(ch) {
			return
		}
	}
}

// park puts a worker that finished back among the idle ones, unless there
// are enough or the Connector is closed.
func (w *workers) park(ch chan func()) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || len(w.idle) >= maxIdleWorkers {
		return false
	}
	w.idle = append(w.idle, ch)
	return true
}

// idleCount returns how many workers wait for work.
func (w *workers) idleCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}

// close ends the idle workers, and every busy one when it finishes.
func (w *workers) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, ch := range w.idle {
		close(ch)
	}
	w.idle = nil
}
