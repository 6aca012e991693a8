package hv_test

import (
	"fmt"
	"time"

	"github.com/hypervault/hv"
)

func ExampleNewKey() {
	created := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	k, err := hv.NewKey(created, 1234, 7)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(k, k.ShardID(), k.AddedID())

	_, err = hv.NewKey(created, 9000, 0)
	fmt.Println(err)
	// Output:
	// 2767643946972825607 1234 7
	// hv: invalid key: shard 9000 outside 0..8191
}

func ExampleParseKey() {
	k, err := hv.ParseKey("2767643946972825607")
	fmt.Println(k.ShardID(), k.AddedID(), err)

	_, err = hv.ParseKey("-5")
	fmt.Println(err)
	// Output:
	// 1234 7 <nil>
	// hv: invalid key: "-5" is negative
}

func ExampleKey_Created() {
	k, _ := hv.ParseKey("2767643946972825607")
	fmt.Println(k.Created())
	fmt.Println(hv.DefaultLayout().MaxTime())
	// Output:
	// 2024-03-01 12:00:00 +0000 UTC
	// 2048-07-20 16:59:19.127 +0000 UTC
}

func ExampleLayout() {
	l, err := hv.NewLayout(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		fmt.Println(err)
		return
	}
	k, _ := l.NewKey(time.Date(2020, 1, 1, 0, 0, 1, 0, time.UTC), 5, 1)
	fmt.Println(k, l.Created(k), k.ShardID())
	// Output:
	// 8388613121 2020-01-01 00:00:01 +0000 UTC 5
}
