'use strict';
// Baseline chat node for Parley's benchmarks: the classic design.
//
// Every client connects to "/" and is in the single room "lobby". Every text
// frame a client sends is published to ONE Redis channel; every message that
// arrives on that channel is sent to all sockets of this node (the sender
// included). On connect the node sends "connected to node <id>".
//
// Flags (env twins in brackets):
//   --port N        [BASELINE_PORT]      listen port (default 8090)
//   --host H        [BASELINE_HOST]      listen address (default 127.0.0.1)
//   --redis URL     [BASELINE_REDIS]     Redis URL (default redis://127.0.0.1:6379/0)
//   --id ID         [BASELINE_ID]        node id (default n1)
//   --channel NAME  [BASELINE_CHANNEL]   Redis channel (default parley-baseline)

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');
const { createClient } = require('redis');

function flag(name, envName, def) {
  const i = process.argv.indexOf('--' + name);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  if (process.env[envName]) return process.env[envName];
  return def;
}

const port = parseInt(flag('port', 'BASELINE_PORT', '8090'), 10);
const host = flag('host', 'BASELINE_HOST', '127.0.0.1');
const redisURL = flag('redis', 'BASELINE_REDIS', 'redis://127.0.0.1:6379/0');
const nodeID = flag('id', 'BASELINE_ID', 'n1');
const channel = flag('channel', 'BASELINE_CHANNEL', 'parley-baseline');

async function main() {
  const pub = createClient({ url: redisURL });
  const sub = pub.duplicate();
  pub.on('error', (err) => console.error(`baseline ${nodeID}: redis pub: ${err.message}`));
  sub.on('error', (err) => console.error(`baseline ${nodeID}: redis sub: ${err.message}`));
  await pub.connect();
  await sub.connect();

  const server = http.createServer((req, res) => {
    if (req.url === '/debug/stats') {
      const mem = process.memoryUsage();
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({
        node: nodeID,
        connections: wss.clients.size,
        rooms: 1,
        heap_alloc: mem.heapUsed,
        heap_inuse: mem.heapTotal,
        rss_bytes: mem.rss,
      }));
      return;
    }
    res.writeHead(404);
    res.end();
  });
  const wss = new WebSocketServer({ server, path: '/', perMessageDeflate: false });

  await sub.subscribe(channel, (message) => {
    for (const ws of wss.clients) {
      if (ws.readyState === WebSocket.OPEN) ws.send(message);
    }
  });

  wss.on('connection', (ws) => {
    ws.send(`connected to node ${nodeID}`);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      pub.publish(channel, data.toString()).catch((err) => {
        console.error(`baseline ${nodeID}: publish: ${err.message}`);
      });
    });
    ws.on('error', () => {});
  });

  server.listen(port, host, () => {
    console.log(`baseline node ${nodeID} listening on ${host}:${port}, redis ${redisURL}`);
  });

  const stop = () => {
    wss.close();
    server.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(`baseline ${nodeID}: ${err.stack || err}`);
  process.exit(1);
});
