// Parley's chat page: protocol v1 over /ws (see docs/PROTOCOL.md).
// Every text from the network is put in the page with textContent, never
// as HTML, so a message cannot inject markup.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let ws = null, room = "", lastSeq = 0, epoch = "", members = new Map(), nextId = 1, retry = 0;

  function line(cls, parts) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
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
  }
  const sys = (text) => line("sys", [["", text]]);

  function renderMembers() {
    const ul = $("members");
    ul.replaceChildren();
    for (const m of [...members.values()].sort((a, b) => a.name.localeCompare(b.name))) {
      const li = document.createElement("li");
      li.textContent = m.name;
      const nd = document.createElement("span");
      nd.className = "nd";
      nd.textContent = "@" + m.node;
      li.appendChild(nd);
      ul.appendChild(li);
    }
  }

  function setOnline(on) {
    $("status").textContent = on ? "online" : "offline";
    $("status").classList.toggle("online", on);
    $("text").disabled = !on;
    $("send").disabled = !on;
  }

  function connect() {
    const name = $("name").value.trim();
    room = $("room").value.trim();
    $("roomname").textContent = room;
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (name) url.searchParams.set("name", name);
    if (ws) { ws.onclose = null; ws.close(); }
    ws = new WebSocket(url);
    ws.onopen = () => { retry = 0; };
    ws.onmessage = (e) => handle(JSON.parse(e.data));
    ws.onclose = (e) => {
      setOnline(false);
      sys("disconnected (" + e.code + (e.reason ? " " + e.reason : "") + ")");
      const delay = Math.min(10000, 500 * 2 ** retry++);
      setTimeout(connect, delay);
    };
  }

  function send(obj) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(obj)); }

  function handle(f) {
    switch (f.type) {
      case "welcome":
        $("node").textContent = "you are " + f.name + " on node " + f.node;
        if ($("name").value.trim() === "") $("name").value = f.name;
        const join = { type: "join", room: room };
        if (lastSeq > 0 && epoch) { join.since = lastSeq; join.epoch = epoch; }
        send(join);
        break;
      case "joined":
        if (f.room !== room) break;
        epoch = f.epoch || "";
        if (!f.recovered) sys("some messages could not be recovered");
        if (lastSeq === 0 || !f.recovered) lastSeq = f.seq;
        setOnline(true);
        sys("joined " + f.room);
        send({ type: "presence", room: room });
        if (lastSeq === f.seq && f.seq > 0) send({ type: "history", room: room, before: f.seq + 1, limit: 20 });
        break;
      case "history":
        for (const m of f.messages || []) showMessage(m);
        break;
      case "message":
        if (f.room !== room) break;
        if (f.seq > lastSeq) lastSeq = f.seq;
        showMessage(f);
        break;
      case "presence":
        members = new Map((f.members || []).map((m) => [m.name + "@" + m.node, m]));
        renderMembers();
        break;
      case "member_joined":
        members.set(f.name + "@" + (f.node || ""), { name: f.name, node: f.node || "" });
        renderMembers();
        sys(f.name + " joined");
        break;
      case "member_left":
        members.delete(f.name + "@" + (f.node || ""));
        renderMembers();
        sys(f.name + " left");
        break;
      case "error":
        line("err", [["", "error " + f.code + ": " + f.message]]);
        break;
      case "reconnect":
        sys("node asks to reconnect: " + f.reason);
        break;
    }
  }

  function showMessage(m) {
    const t = new Date(m.ts).toLocaleTimeString();
    line("", [["from", m.from], ["", m.text], ["meta", "#" + m.seq + " " + t]]);
  }

  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    lastSeq = 0; epoch = "";
    $("log").replaceChildren();
    connect();
  });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text").value;
    if (!text) return;
    send({ type: "send", room: room, text: text, id: "c" + nextId++ });
    $("text").value = "";
  });
})();
