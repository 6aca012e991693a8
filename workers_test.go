package hv

import (
	"runtime"
	"sync"
	"testing"
)

// TestWorkersKeepAtMostMaxIdle runs more work at once than workers are
// kept: afterwards maxIdleWorkers wait, the rest ended, and close ends the
// waiting ones; work run after close still runs.
func TestWorkersKeepAtMostMaxIdle(t *testing.T) {
	var w workers
	base := runtime.NumGoroutine()
	release := make(chan struct{})
	var started, done sync.WaitGroup
	const n = maxIdleWorkers + 20
	for range n {
		started.Add(1)
		done.Add(1)
		w.run(func() {
			defer done.Done()
			started.Done()
			<-release
		})
	}
	started.Wait() // all n at once: none waited for another to finish
	close(release)
	done.Wait()
	waitUntil(t, "the surplus workers to end", func() bool {
		return w.idleCount() == maxIdleWorkers && runtime.NumGoroutine()-base <= maxIdleWorkers
	})
	// Reuse: a second round starts no goroutine beyond the idle ones.
	var again sync.WaitGroup
	for range maxIdleWorkers {
		again.Add(1)
		w.run(again.Done)
	}
	again.Wait()
	if got := runtime.NumGoroutine() - base; got > maxIdleWorkers {
		t.Errorf("%d goroutines after reusing %d idle workers", got, maxIdleWorkers)
	}
	w.close()
	ran := make(chan struct{})
	w.run(func() { close(ran) })
	<-ran
	waitUntil(t, "every worker to end after close", func() bool {
		return w.idleCount() == 0 && runtime.NumGoroutine() <= base
	})
}
