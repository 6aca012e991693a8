package hv_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"expvar"
	"fmt"
	"log"
	"os"

	"github.com/hypervault/hv"
)

// Connector.Stats can be published with expvar, so that /debug/vars (served
// by expvar's handler on http.DefaultServeMux) shows each host's pool:
// open, in-use and idle connections, waits, pool timeouts and search_path
// switches. expvar.Publish panics when a name is taken: publish once per
// Connector, under a name of its own.
func Example_expvar() {
	cfg, err := hv.ParseConfig(os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	connector, err := hv.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()

	expvar.Publish("hv_example_expvar", expvar.Func(func() any { return connector.Stats() }))

	for _, shard := range []int{2, 3, 10} {
		ctx := hv.WithShard(context.Background(), shard)
		if _, err := db.ExecContext(ctx, "INSERT INTO notes VALUES (500, 'counted')"); err != nil {
			log.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "DELETE FROM notes WHERE id = 500"); err != nil {
			log.Fatal(err)
		}
	}

	// What /debug/vars would show under "hv_example_expvar", read back.
	var hosts []hv.HostStats
	if err := json.Unmarshal([]byte(expvar.Get("hv_example_expvar").String()), &hosts); err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(hosts), "hosts")
	for _, h := range hosts {
		fmt.Printf("shards %v: pool_max %d, in use %d, switched search_path: %v, timeouts %d\n",
			h.Shards, h.PoolMax, h.DB.InUse, h.SchemaSwitches > 0, h.Timeouts)
	}
	// Output:
	// 2 hosts
	// shards 1-9: pool_max 10, in use 0, switched search_path: true, timeouts 0
	// shards 9-17: pool_max 10, in use 0, switched search_path: true, timeouts 0
}
