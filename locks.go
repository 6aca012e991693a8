package hv

import "strconv"

// hv's advisory locks take two int4 keys: a class naming what the lock is
// for, and the shard (or -1 for a whole database). Each purpose has a class
// of its own, so that one never waits for another: a CreateShards holding
// its lock on a shard must not stall that shard's next_id().
const (
	// lockNextIDJump serialises next_id()'s jumps of a shard's sequence
	// (nextid.go). Deployed shards' functions name it: it never changes.
	lockNextIDJump = 0x6876 // "hv"
	// lockCreateShards serialises CreateShards on one database (-1: the
	// extension) and shard.
	lockCreateShards = 0x6877
)

// advisoryXactLock returns the statement that takes the transaction-level
// advisory lock (class, key).
func advisoryXactLock(class, key int) string {
	return "SELECT pg_catalog.pg_advisory_xact_lock(" + strconv.Itoa(class) + ", " + strconv.Itoa(key) + ")"
}
