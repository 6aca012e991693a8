package hv_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"

	"github.com/hypervault/hv"
)

// A request that saves a note and reads it back from a replica: under
// WithReadYourWrites the read goes to a replica only once it has replayed
// the save, else to the primary, so it never misses it. (The example fleet
// has no replicas, so its hosts serve replica reads themselves; with
// replicas=HOST:PORT in a host's segment they would.)
func ExampleWithReadYourWrites() {
	db, err := sql.Open("hv", os.Getenv("HV_DSN"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	req := hv.WithReadYourWrites(hv.WithShard(context.Background(), 7))
	if _, err := db.ExecContext(req, "INSERT INTO notes VALUES ($1, $2)", 70, "saved"); err != nil {
		log.Fatal(err)
	}
	var body string
	if err := db.QueryRowContext(hv.WithReplica(req), "SELECT body FROM notes WHERE id = $1", 70).Scan(&body); err != nil {
		log.Fatal(err)
	}
	fmt.Println(body)
	// Output: saved
}
