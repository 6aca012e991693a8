package hv

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The configuration of replicas and of libpq's multi-host form (failover):
// a host segment's replicas=HOST:PORT[,HOST:PORT...], the global
// max_replica_lag, and host=a,b port=p,q target_session_attrs=read-write.

// splitReplicas splits a DSN replicas= value at its commas; empty items stay,
// for checkReplicas to refuse with the segment named.
func splitReplicas(v string) []string {
	return strings.Split(v, ",")
}

// checkReplicas returns why h's replicas or multi-host keywords are refused,
// or "".
func checkReplicas(c *Config, h *HostConfig) string {
	hosts := strings.Split(h.Params["host"], ",")
	if len(hosts) > 1 {
		if c.Driver == "postgres" {
			return "a multi-host segment (host=a,b) needs driver pgx: lib/pq connects to one host only"
		}
		for _, hh := range hosts {
			if strings.TrimSpace(hh) == "" {
				return fmt.Sprintf("host=%s has an empty host name", h.Params["host"])
			}
		}
		if ports := strings.Split(h.Params["port"], ","); len(ports) > 1 && len(ports) != len(hosts) {
			return fmt.Sprintf("host names %d hosts but port names %d ports: give one port, or one per host", len(hosts), len(ports))
		}
	}
	seen := map[string]bool{}
	for i, r := range h.Replicas {
		host, port, err := net.SplitHostPort(r)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil || host == "" || strings.ContainsAny(host, ", ") || perr != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "":
			return fmt.Sprintf("replica %d %q is not HOST:PORT (replicas=HOST:PORT[,HOST:PORT...], port 1..65535)", i+1, r)
		case seen[r]:
			return fmt.Sprintf("replica %q is listed twice", r)
		}
		seen[r] = true
	}
	return ""
}

// hostPorts returns a host keyword's hosts each with its port
// ("a:5432,b:5433"), or the one host with its port, for Name.
func hostPorts(host, port string) string {
	hosts := strings.Split(host, ",")
	ports := strings.Split(port, ",")
	out := make([]string, len(hosts))
	for i, h := range hosts {
		p := ports[0]
		if len(ports) == len(hosts) {
			p = ports[i]
		}
		out[i] = h
		if p != "" {
			out[i] += ":" + p
		}
	}
	return strings.Join(out, ",")
}

// replicaHostConfig returns the HostConfig of h's replica at addr
// (HOST:PORT): h's keywords with host and port replaced and those that
// choose among several hosts (hostaddr, target_session_attrs,
// load_balance_hosts) left out, as a standby is read-only.
func replicaHostConfig(h *HostConfig, addr string) HostConfig {
	host, port, _ := net.SplitHostPort(addr) // checked by checkReplicas
	params := make(map[string]string, len(h.Params))
	for k, v := range h.Params {
		if !slices.Contains([]string{"hostaddr", "target_session_attrs", "load_balance_hosts"}, k) {
			params[k] = v
		}
	}
	params["host"], params["port"] = host, port
	return HostConfig{Shards: h.Shards, Params: params, PoolMax: h.PoolMax}
}

// maxReplicaLag returns MaxReplicaLag, or DefaultMaxReplicaLag when it is
// zero.
func (c *Config) maxReplicaLag() time.Duration {
	if c.MaxReplicaLag > 0 {
		return c.MaxReplicaLag
	}
	return DefaultMaxReplicaLag
}
