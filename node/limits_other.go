//go:build !unix

package node

// defaultMaxConns is MaxConns' default where there is no open-file limit to
// derive it from.
func defaultMaxConns() int { return 10000 }
