package actors

import cmap "github.com/orcaman/concurrent-map"

// registryShards is how many maps each of the 1,024 buckets of protoactor's
// process registry (one entry per actor) is split into. The library's
// default, 32, makes 32,768 maps: ~2.8 MB before any actor exists, and at
// 15,000 actors most actors get a map group of their own (~0.2 KiB each).
// One map per bucket keeps 1,024 locks, plenty for a node's cores, and
// costs an actor only its slot (BENCHMARKS.md, issue 11).
const registryShards = 1

// init sets the shard count of concurrent-map, whose only user in a Parley
// binary is protoactor's process registry. It must be set before the first
// map is made and never changed (a key's shard is computed from it on every
// call), hence an init: it runs before any actor system can exist.
func init() { cmap.SHARD_COUNT = registryShards }
