// Parley's chat page, on parley.js (the resuming client, docs/PROTOCOL.md).
// Every text from the network is put in the page with textContent, never
// as HTML, so a message cannot inject markup. Messages are shown as
// parley.js delivers them, each seq once: after a reconnect it resumes with
// since, and the page never asks for history again.
import { Parley } from "/static/parley.js";

const $ = (id) => document.getElementById(id);
let p = null; // the client while joined
let room = "";
let members = new Map();
let sawBacklog = false; // history asked once, at the first join only
let asking = null; // member events seen while a presence request is out (replayed on its answer)

function line(cls, parts, attrs) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  for (const [k, v] of Object.entries(attrs || {})) li.setAttribute(k, v);
  for (const [c, text] of parts) {
    const span = document.createElement("span");
    if (c) span.className = c;
    span.textContent = text;
    li.appendChild(span);
  }
  const log = $("log");
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
  return li;
}
const sys = (text) => line("sys", [["", text]]);

// showMessage appends one message. parley.js delivers each seq once; the
// backlog (history at the first join) ends where the live messages begin.
function showMessage(m) {
  const own = p && m.from === p.name;
  const t = new Date(m.ts).toLocaleTimeString();
  line(own ? "msg own" : "msg", [["from", own ? m.from + " (you)" : m.from], ["text", m.text], ["meta", "#" + m.seq + " " + t]],
    { "data-seq": String(m.seq), "data-from": m.from });
}

function renderMembers() {
  const ul = $("members");
  ul.replaceChildren();
  for (const m of [...members.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const li = document.createElement("li");
    li.textContent = m.name;
    li.dataset.node = m.node;
    const nd = document.createElement("span");
    nd.className = "nd";
    nd.textContent = "@" + m.node;
    li.appendChild(nd);
    ul.appendChild(li);
  }
}

// memberEvent applies a member_joined/member_left to the list.
function memberEvent(kind, m) {
  if (kind === "member_joined") members.set(m.name + "@" + m.node, m);
  else members.delete(m.name + "@" + m.node);
}

// refreshPresence asks who is in the room. The answer may have been read
// before an event that arrived ahead of it, so the events seen meanwhile
// are applied again on top of it, in order.
async function refreshPresence(r) {
  const seen = [];
  asking = seen;
  try {
    const list = await p.presence(r);
    if (!p) return;
    members = new Map(list.map((m) => [m.name + "@" + m.node, m]));
    for (const [kind, m] of seen) memberEvent(kind, m);
    // You are in the room once joined, whether or not the bus listed you yet.
    members.set(p.name + "@" + p.node, { name: p.name, node: p.node });
    renderMembers();
  } catch (e) { /* offline again: refreshed on the next join */ }
  if (asking === seen) asking = null;
}

function setOnline(on) {
  $("status").textContent = on ? "online" : (p ? "reconnecting" : "offline");
  $("status").classList.toggle("online", on);
  $("text").disabled = !on;
  checkSize();
}

function notice(text) {
  $("notice").textContent = text;
  $("notice").hidden = !text;
}

// checkSize keeps the send button off while the text would not fit the
// node's message size (from welcome), and says how much is left.
function checkSize() {
  const text = $("text").value;
  const fits = !p || p.fits(room, text);
  $("size").classList.toggle("over", !fits);
  $("size").textContent = p && p.maxMessageSize && text.length > 0
    ? (fits ? "" : "too long: ") + new TextEncoder().encode(text).length + " / " + p.maxMessageSize + " bytes"
    : "";
  $("send").disabled = $("text").disabled || !text || !fits;
}

function join() {
  const name = $("name").value.trim();
  room = $("room").value.trim();
  $("roomname").textContent = room;
  $("log").replaceChildren();
  members = new Map();
  renderMembers();
  notice("");
  sawBacklog = false;
  p = new Parley({ name });
  p.on("welcome", (w) => {
    $("node").textContent = "you are " + w.name + " on node " + w.node;
    $("node").dataset.node = w.node;
    if (!$("name").value.trim()) $("name").value = w.name;
    // The input cannot hold more characters than the node takes bytes.
    if (w.maxMessageSize) $("text").maxLength = w.maxMessageSize;
  });
  p.on("status", (s) => {
    setOnline(s.state === "online");
    if (s.state === "offline") sys("disconnected (" + s.reason + "), reconnecting…");
  });
  p.on("joined", async (j) => {
    sys((sawBacklog ? "rejoined " : "joined ") + j.room + " on node " + p.node);
    if (!sawBacklog) {
      sawBacklog = true;
      if (j.seq > 0) {
        try {
          for (const m of await p.history(j.room, j.seq + 1, 20)) showMessage(Object.assign({ epoch: j.epoch }, m));
        } catch (e) { /* offline again: the live messages still come */ }
      }
    }
    await refreshPresence(j.room);
  });
  p.on("message", showMessage);
  p.on("presence_events", async (e) => {
    if (e.state === "off") {
      sys("this room is large: join and leave notices are off");
      return;
    }
    sys("join and leave notices are on again");
    await refreshPresence(e.room);
  });
  p.on("reset", (r) => sys("some messages of " + r.room + " were lost (the bus restarted); continuing"));
  p.on("member_joined", (m) => {
    memberEvent("member_joined", m);
    if (asking) asking.push(["member_joined", m]);
    renderMembers();
    sys(m.name + " joined");
  });
  p.on("member_left", (m) => {
    memberEvent("member_left", m);
    if (asking) asking.push(["member_left", m]);
    renderMembers();
    sys(m.name + " left");
  });
  p.on("reconnect", (r) => sys("node " + p.node + " is going away (" + r.reason + "); moving to another"));
  p.on("error", (e) => line("err", [["", "error " + e.code + ": " + e.message]]));
  p.on("refused", (r) => {
    notice("The server refused you: " + r.reason);
    stop();
  });
  p.join(room).catch((e) => line("err", [["", "could not join " + room + ": " + e.message]]));
  $("connect").disabled = true;
  $("leave").disabled = false;
  $("name").disabled = $("room").disabled = true;
}

function stop() {
  if (p) p.close();
  p = null;
  setOnline(false);
  $("node").textContent = "";
  $("connect").disabled = false;
  $("leave").disabled = true;
  $("name").disabled = $("room").disabled = false;
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  join();
});
$("leave").addEventListener("click", async () => {
  if (!p) return;
  try { await p.leave(room); } catch (e) { /* closing anyway */ }
  sys("you left " + room);
  members = new Map();
  renderMembers();
  stop();
});
$("text").addEventListener("input", checkSize);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text || !p || !p.fits(room, text)) return;
  $("text").value = "";
  checkSize();
  p.send(room, text).catch((err) => line("err", [["", "not sent: " + err.message]]));
});
