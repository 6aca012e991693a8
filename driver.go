package hv

import (
	"context"
	"database/sql"
	"database/sql/driver"

	"github.com/jmoiron/sqlx"
)

// Driver is the hv database/sql driver, registered as "hv". Prefer
// sql.Open("hv", dsn) or sql.OpenDB(connector); both use one Connector per
// *sql.DB.
type Driver struct{}

func init() {
	sql.Register("hv", &Driver{})
	// hv speaks PostgreSQL: sqlx.Open("hv", dsn) and Rebind use $n.
	sqlx.BindDriver("hv", sqlx.DOLLAR)
}

// OpenConnector parses dsn (see ParseConfig) and returns a Connector.
// database/sql calls it once per sql.Open. It returns an error wrapping
// ErrBadConfig when the DSN is invalid.
func (d *Driver) OpenConnector(dsn string) (driver.Connector, error) {
	cfg, err := ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	return NewConnector(cfg)
}

// Open returns a connection with pools of its own, closed with it.
// database/sql never calls it for hv (it uses OpenConnector); it exists for
// code that drives a driver.Driver by hand.
func (d *Driver) Open(dsn string) (driver.Conn, error) {
	c, err := d.OpenConnector(dsn)
	if err != nil {
		return nil, err
	}
	cn, err := c.Connect(context.Background())
	if err != nil {
		return nil, err
	}
	cn.(*conn).ownsConnector = true
	return cn, nil
}
