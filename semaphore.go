package hv

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// semaphore counts the connections a host (pool_max) or a shard (shard_max)
// holds. Unlike a buffered channel its limit can change while it is in use,
// so that Reconfigure resizes a pool in place. Waiters are served in arrival
// order.
type semaphore struct {
	mu      sync.Mutex
	limit   int
	held    int
	waiters list.List // of chan struct{}, closed when granted
}

func newSemaphore(limit int) *semaphore { return &semaphore{limit: limit} }

// tryAcquire takes a token if one is free and nobody waits for one.
func (s *semaphore) tryAcquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held < s.limit && s.waiters.Len() == 0 {
		s.held++
		return true
	}
	return false
}

// acquire waits for a token until ctx ends or timeout passes. It reports
// false, with ctx's cause or nil for the timeout, when it got none.
func (s *semaphore) acquire(ctx context.Context, timeout time.Duration) (bool, error) {
	s.mu.Lock()
	if s.held < s.limit && s.waiters.Len() == 0 {
		s.held++
		s.mu.Unlock()
		return true, nil
	}
	if timeout <= 0 {
		s.mu.Unlock()
		return false, nil
	}
	ready := make(chan struct{})
	elem := s.waiters.PushBack(ready)
	s.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-ready:
		return true, nil
	case <-ctx.Done():
		err = context.Cause(ctx)
	case <-t.C:
	}
	s.mu.Lock()
	select {
	case <-ready:
		// Granted while giving up: keep it.
		s.mu.Unlock()
		return true, nil
	default:
	}
	s.waiters.Remove(elem)
	s.mu.Unlock()
	return false, err
}

// release gives a token back.
func (s *semaphore) release() {
	s.mu.Lock()
	s.held--
	s.grant()
	s.mu.Unlock()
}

// setLimit changes the limit; tokens held above a lowered limit are given
// back as usual, and no new one is granted until held is below it.
func (s *semaphore) setLimit(n int) {
	s.mu.Lock()
	s.limit = n
	s.grant()
	s.mu.Unlock()
}

// inUse returns how many tokens are held.
func (s *semaphore) inUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held
}

// grant hands free tokens to the waiters in order. Called with s.mu held.
func (s *semaphore) grant() {
	for s.held < s.limit {
		front := s.waiters.Front()
		if front == nil {
			return
		}
		s.waiters.Remove(front)
		s.held++
		close(front.Value.(chan struct{}))
	}
}
