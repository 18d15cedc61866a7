// parley.js: a small, dependency-free client for Parley's protocol v1 (the
// /ws endpoint, docs/PROTOCOL.md), as an ES module. Every node serves it at
// /static/parley.js. It survives what nodes do to their clients:
//
//   - on a `reconnect` notice, close 1001 (drain), 4008 (slow consumer) or a
//     lost network it reconnects with jittered, doubling back-off (never
//     before a notice's after_ms);
//   - it rejoins every room with since = the last seq it delivered (and that
//     seq's epoch), so nothing is missed;
//   - it delivers each room's messages once and in seq order: a message whose
//     seq it has delivered already is dropped;
//   - every send keeps its id until answered, and is written again with the
//     same id after a reconnect (the node acks a repeat with the original
//     seq instead of publishing it twice); "unavailable", "draining" and
//     "rate_limited" answers are retried the same way;
//   - a refusal (bad name, bad token, origin: HTTP 4xx at the upgrade, which
//     a browser only shows as close 1006; or close 1008) ends the client
//     with a "refused" event carrying the node's reason as text, instead of
//     a reconnect loop. To learn that reason it asks the node (a plain GET of
//     the same /ws URL answers with the status the upgrade would get).
//
//   import { Parley } from "/static/parley.js";
//   const p = new Parley({ name: "alice" });         // same host, /ws
//   p.on("message", (m) => console.log(m.from, m.text));
//   p.on("refused", (e) => alert(e.reason));
//   await p.join("lobby");
//   await p.send("lobby", "hi");                     // resolves with the ack
//
// Events (p.on(type, fn); fn gets one object):
//   welcome     {node, name, session, maxMessageSize}  each connection
//   status      {state: "connecting"|"online"|"offline"|"closed", reason}
//   joined      {room, seq, epoch, recovered, presenceEvents: "on"|"off"}  each (re)join
//   presence_events {room, state: "on"|"off"}  a large room stopped (or resumed)
//                                    member_joined/member_left: ask presence
//   message     {room, seq, epoch, from, text, id, ts} once per seq, in order
//   reset       {room, epoch, seq}   the room's history was lost: messages
//                                    before seq of epoch will not come
//   member_joined / member_left {room, name, node}
//   error       {code, message, id, room}              a request the node refused
//   reconnect   {reason, afterMs}                      the node asked us to move
//   refused     {status, reason}    the node will not have us: the client stopped
"use strict";

const RETRY_CODES = new Set(["unavailable", "draining", "rate_limited", "busy"]);
// Close codes that mean "do not come back as you are": policy (1008, e.g. a
// token expired), and protocol violations the node reports.
const REFUSED_CLOSES = new Set([1002, 1003, 1007, 1008, 1009]);

export class Parley {
  // opts: url (default: ws(s)://this host/ws), name, token, minBackoffMs
  // (250), maxBackoffMs (10000), pingMs (15000: a silent connection is taken
  // as lost after three pings unanswered).
  constructor(opts = {}) {
    const base = new URL(opts.url || "/ws", typeof location !== "undefined" ? location.href : undefined);
    if (base.protocol === "http:") base.protocol = "ws:";
    if (base.protocol === "https:") base.protocol = "wss:";
    if (opts.name) base.searchParams.set("name", opts.name);
    if (opts.token) base.searchParams.set("token", opts.token);
    this.url = base.toString();
    this.minBackoff = opts.minBackoffMs || 250;
    this.maxBackoff = opts.maxBackoffMs || 10000;
    this.pingMs = opts.pingMs || 15000;
    this.handlers = new Map();
    this.rooms = new Map(); // name → {epoch, seq, joined, waiters: []}
    this.sends = new Map(); // id → {room, text, resolve, reject, written}
    this.requests = []; // {id, kind, room, resolve, reject}: replies carry no id, so matched by kind and room, in order
    this.joins = new Map(); // join frame id → room
    this.ws = null;
    this.welcomed = false;
    this.draining = false; // the current socket got a reconnect notice
    this.resumeAt = 0; // not before this time (a notice's after_ms)
    this.attempt = 0;
    this.closed = false;
    this.counter = 0;
    this.prefix = Math.random().toString(36).slice(2, 8);
    this.node = "";
    this.name = opts.name || "";
    this.maxMessageSize = 0; // from welcome
    this.timer = null;
    this.pinger = null;
    this.lastHeard = 0;
    this.connect();
  }

  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, []);
    this.handlers.get(type).push(fn);
    return this;
  }

  emit(type, detail) {
    for (const fn of this.handlers.get(type) || []) {
      try { fn(detail); } catch (e) { setTimeout(() => { throw e; }); }
    }
  }

  nextId(kind) { return kind + "-" + this.prefix + "-" + (++this.counter); }

  // join resolves once the node confirms; the room is rejoined after every
  // reconnect until leave.
  join(room) {
    let r = this.rooms.get(room);
    if (!r) {
      r = { epoch: "", seq: 0, joined: false, waiters: [] };
      this.rooms.set(room, r);
      this.writeJoin(room, r);
    }
    if (r.joined) return Promise.resolve();
    return new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
  }

  leave(room) {
    const r = this.rooms.get(room);
    if (!r) return Promise.resolve();
    this.rooms.delete(room);
    for (const [id, s] of this.sends) {
      if (s.room === room) { this.sends.delete(id); s.reject(new Error("left " + room)); }
    }
    for (const w of r.waiters) w.reject(new Error("left " + room));
    if (!this.writable()) return Promise.resolve();
    return this.request({ type: "leave", room }, "left");
  }

  // send resolves with the ack {room, id, seq, repeat}; it is retried with
  // the same id through reconnects until the node answers.
  send(room, text, id) {
    id = id || this.nextId("m");
    const frame = JSON.stringify({ type: "send", room, text, id });
    const size = new TextEncoder().encode(frame).length;
    if (this.maxMessageSize && size > this.maxMessageSize) {
      return Promise.reject(new Error("message too large: " + size + " bytes, the node takes " + this.maxMessageSize));
    }
    return new Promise((resolve, reject) => {
      const s = { room, text, id, frame, resolve, reject };
      this.sends.set(id, s);
      this.writeSend(s);
    });
  }

  // fits says whether a send of text to room would be within the node's
  // message size (before the first welcome: unknown, true).
  fits(room, text) {
    if (!this.maxMessageSize) return true;
    const frame = JSON.stringify({ type: "send", room, text, id: "m-" + this.prefix + "-" + (this.counter + 1) });
    return new TextEncoder().encode(frame).length <= this.maxMessageSize;
  }

  history(room, before, limit) {
    const f = { type: "history", room };
    if (before) f.before = before;
    if (limit) f.limit = limit;
    return this.request(f, "history");
  }

  presence(room) { return this.request({ type: "presence", room }, "presence"); }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.pinger);
    if (this.ws) { this.ws.onclose = null; this.ws.close(1000); }
    this.failAll(new Error("closed"));
    this.emit("status", { state: "closed", reason: "closed" });
  }

  // ---- internals ----

  writable() { return this.ws && this.ws.readyState === 1 && this.welcomed && !this.draining; }

  write(obj) { this.ws.send(typeof obj === "string" ? obj : JSON.stringify(obj)); }

  writeJoin(room, r) {
    if (!this.writable()) return;
    const f = { type: "join", room, id: this.nextId("j") };
    if (r.seq > 0 && r.epoch) { f.since = r.seq; f.epoch = r.epoch; }
    this.joins.set(f.id, room);
    this.write(f);
  }

  writeSend(s) {
    const r = this.rooms.get(s.room);
    // Written once the room is joined on this connection (a resend before
    // the rejoin would be refused with not_joined).
    if (this.writable() && r && r.joined) this.write(s.frame);
  }

  request(f, kind) {
    if (!this.writable()) return Promise.reject(new Error("offline"));
    f.id = this.nextId("q");
    return new Promise((resolve, reject) => {
      this.requests.push({ id: f.id, kind, room: f.room, resolve, reject });
      this.write(f);
    });
  }

  // takeRequest removes and returns the oldest request matching pred.
  takeRequest(pred) {
    const i = this.requests.findIndex(pred);
    return i < 0 ? null : this.requests.splice(i, 1)[0];
  }

  failAll(err) {
    for (const s of this.sends.values()) s.reject(err);
    this.sends.clear();
    for (const q of this.requests) q.reject(err);
    this.requests = [];
    for (const r of this.rooms.values()) for (const w of r.waiters) w.reject(err);
  }

  backoff() {
    const d = Math.min(this.maxBackoff, this.minBackoff * 2 ** this.attempt++);
    return d / 2 + Math.random() * d / 2; // jitter: [d/2, d)
  }

  connect() {
    if (this.closed) return;
    this.emit("status", { state: "connecting", reason: "" });
    this.welcomed = false;
    this.draining = false;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (e) => {
      this.lastHeard = Date.now();
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      this.handle(f);
    };
    ws.onclose = (e) => this.ended(ws, e);
    ws.onerror = () => {}; // onclose follows with the code
  }

  async ended(ws, e) {
    if (ws !== this.ws || this.closed) return;
    clearInterval(this.pinger);
    const hadWelcome = this.welcomed;
    this.welcomed = false;
    for (const r of this.rooms.values()) r.joined = false;
    // Requests die with the connection; sends and joins wait for the next one.
    for (const q of this.requests) q.reject(new Error("connection lost"));
    this.requests = [];
    this.joins.clear();
    if (REFUSED_CLOSES.has(e.code)) {
      return this.refused(0, "closed " + e.code + (e.reason ? ": " + e.reason : ""));
    }
    this.emit("status", { state: "offline", reason: e.code + (e.reason ? " " + e.reason : "") });
    if (!hadWelcome && e.code === 1006) {
      // A refused upgrade and a lost network look the same from here: ask.
      const why = await this.probe();
      if (this.closed) return;
      if (why) return this.refused(why.status, why.reason);
    }
    const wait = Math.max(this.backoff(), this.resumeAt - Date.now());
    this.timer = setTimeout(() => this.connect(), wait);
  }

  // probe asks the node what an upgrade with our query gets: a 4xx other
  // than 426 (and 429, a limit worth waiting out) is a refusal.
  async probe() {
    try {
      const u = new URL(this.url);
      u.protocol = u.protocol === "wss:" ? "https:" : "http:";
      const resp = await fetch(u, { cache: "no-store" });
      if (resp.status >= 400 && resp.status < 500 && resp.status !== 426 && resp.status !== 429) {
        return { status: resp.status, reason: (await resp.text()).trim() || resp.statusText };
      }
    } catch { /* the network is down: retry */ }
    return null;
  }

  refused(status, reason) {
    this.closed = true;
    clearTimeout(this.timer);
    this.failAll(new Error("refused: " + reason));
    this.emit("status", { state: "closed", reason });
    this.emit("refused", { status, reason });
  }

  handle(f) {
    switch (f.type) {
      case "welcome":
        this.welcomed = true;
        this.attempt = 0;
        this.node = f.node;
        this.name = f.name;
        this.maxMessageSize = f.max_message_size || 0;
        this.emit("welcome", { node: f.node, name: f.name, session: f.session, maxMessageSize: this.maxMessageSize });
        this.emit("status", { state: "online", reason: "" });
        for (const [room, r] of this.rooms) this.writeJoin(room, r);
        clearInterval(this.pinger);
        this.pinger = setInterval(() => this.ping(), this.pingMs);
        break;
      case "joined": {
        const r = this.rooms.get(f.room);
        if (!r) break;
        const resumed = r.seq > 0;
        if (resumed && (!f.recovered || (r.epoch && f.epoch !== r.epoch))) {
          // History lost: what came before f.seq of the new epoch is gone.
          r.epoch = f.epoch;
          r.seq = f.seq;
          this.emit("reset", { room: f.room, epoch: f.epoch, seq: f.seq });
        } else if (!resumed) {
          r.epoch = f.epoch;
          r.seq = f.seq; // messages after it come live
        }
        r.joined = true;
        this.emit("joined", { room: f.room, seq: f.seq, epoch: f.epoch, recovered: f.recovered, presenceEvents: f.presence_events || "on" });
        for (const w of r.waiters) w.resolve();
        r.waiters = [];
        for (const s of this.sends.values()) if (s.room === f.room) this.writeSend(s);
        break;
      }
      case "message": {
        const r = this.rooms.get(f.room);
        if (!r) break;
        if (f.epoch === r.epoch && f.seq <= r.seq) break; // seen: never show twice
        if (f.epoch !== r.epoch && r.epoch) {
          // A new epoch without a resync notice first: a reset all the same.
          this.emit("reset", { room: f.room, epoch: f.epoch, seq: f.seq - 1 });
        }
        r.epoch = f.epoch;
        r.seq = f.seq;
        this.emit("message", { room: f.room, seq: f.seq, epoch: f.epoch, from: f.from, text: f.text, id: f.id, ts: f.ts });
        break;
      }
      case "ack": {
        const s = this.sends.get(f.id);
        if (!s) break;
        this.sends.delete(f.id);
        s.resolve({ room: f.room, id: f.id, seq: f.seq, repeat: !!f.repeat });
        break;
      }
      case "left":
      case "history":
      case "presence": {
        const q = this.takeRequest((q) => q.kind === f.type && q.room === f.room);
        if (q) q.resolve(f.type === "history" ? (f.messages || []) : f.type === "presence" ? (f.members || []) : f);
        break;
      }
      case "presence_events":
        if (this.rooms.has(f.room)) this.emit("presence_events", { room: f.room, state: f.state });
        break;
      case "member_joined":
      case "member_left":
        if (this.rooms.has(f.room)) this.emit(f.type, { room: f.room, name: f.name, node: f.node || "" });
        break;
      case "reconnect":
        this.draining = true;
        this.resumeAt = Date.now() + (f.after_ms || 0);
        this.attempt = 0;
        this.emit("reconnect", { reason: f.reason, afterMs: f.after_ms || 0 });
        break;
      case "error":
        this.errorFrame(f);
        break;
    }
  }

  errorFrame(f) {
    const s = f.id && this.sends.get(f.id);
    if (s) {
      if (RETRY_CODES.has(f.code) || f.code === "not_joined") {
        // Same id again, later: the node never published it, or will say
        // repeat if it did.
        const wait = f.retry_after_ms || this.backoff();
        setTimeout(() => this.writeSend(s), wait);
        return;
      }
      this.sends.delete(f.id);
      s.reject(Object.assign(new Error(f.code + ": " + f.message), { code: f.code }));
      this.emit("error", { code: f.code, message: f.message, id: f.id, room: s.room });
      return;
    }
    const room = f.id && this.joins.get(f.id);
    if (room) {
      this.joins.delete(f.id);
      const r = this.rooms.get(room);
      if (!r) return;
      if (RETRY_CODES.has(f.code)) {
        // Not joined yet: try again (on this connection, or the next one).
        setTimeout(() => this.writeJoin(room, r), f.retry_after_ms || this.backoff());
        return;
      }
      this.rooms.delete(room);
      const err = Object.assign(new Error(f.code + ": " + f.message), { code: f.code });
      for (const w of r.waiters) w.reject(err);
      this.emit("error", { code: f.code, message: f.message, id: f.id, room });
      return;
    }
    const q = f.id && this.takeRequest((q) => q.id === f.id);
    if (q) q.reject(Object.assign(new Error(f.code + ": " + f.message), { code: f.code }));
    if (f.code === "draining") return; // a request refused mid-drain: the caller asks again
    this.emit("error", { code: f.code, message: f.message, id: f.id || "", room: f.room || "" });
  }

  ping() {
    if (!this.ws || this.ws.readyState !== 1) return;
    if (Date.now() - this.lastHeard > 3 * this.pingMs) {
      this.ws.close(4000, "no answer to pings"); // onclose reconnects
      return;
    }
    this.write({ type: "ping" });
  }
}
