// tether dashboard: device A in a browser. Plain JS, no build step.
//
// The client key lives in this tab's sessionStorage and is only sent in an
// Authorization header (REST). The live connection, /v1/client, is opened
// with a single-use ticket bought with the key (POST /v1/tickets), because
// browsers cannot set headers on a WebSocket and a key must never travel in
// a URL. Frames are described in protocol/CLIENT.md.
"use strict";

(() => {
  const KEY = "tether.key";
  const MAX_LOG = 200;
  const MAX_EVENTS = 200;

  // Example params for the built-in methods, used when a method is picked.
  const EXAMPLES = {
    "gpio.read": { pin: "GPIO27" },
    "gpio.write": { pin: "GPIO17", level: "high" },
    "gpio.pulse": { pin: "GPIO17", level: "high", duration: "100ms" },
    "pwm.set": { pin: "GPIO18", duty: 0.5, frequency: 1000 },
    "i2c.tx": { bus: "1", addr: "0x48", write: "00", read: 2 },
    "spi.tx": { port: "SPI0.0", write: "c0ffee" },
    "sys.info": {},
    "sys.ping": { hello: "tether" },
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("data-") || k.startsWith("aria-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };

  const state = {
    key: sessionStorage.getItem(KEY),
    devices: new Map(), // id → DeviceInfo (+ live online/last_seen)
    selected: null,
    events: new Map(), // device → [event]
    lastSeq: new Map(), // device → highest seq seen
    byRef: new Map(), // ref → log entry
    byId: new Map(), // request id → log entry
    ws: null,
    refN: 0,
    retry: 0,
    timer: null,
    pendingTimer: null,
  };

  // ---- REST -------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.key };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) {
      const e = new Error((data.error && data.error.message) || r.statusText);
      e.status = r.status;
      throw e;
    }
    return data;
  }

  async function loadDevices() {
    const { devices } = await api("GET", "/v1/devices");
    for (const d of devices) {
      const old = state.devices.get(d.id);
      state.devices.set(d.id, Object.assign(old || {}, d));
      // A device first seen now is followed at once on a live socket;
      // the socket's open handler follows those known before.
      if (!old) send({ type: "subscribe", device: d.id, after: state.lastSeq.get(d.id) });
    }
    renderDevices();
    if (state.selected) {
      renderDevice();
      loadPending();
    }
    return devices;
  }

  // ---- sign in / out ----------------------------------------------------

  async function signIn(ev) {
    ev.preventDefault();
    const key = $("key").value.trim();
    $("signin-error").textContent = "";
    if (!key) return;
    state.key = key;
    try {
      await loadDevices();
    } catch (e) {
      state.key = null;
      $("signin-error").textContent = e.status === 401 ? "That key was not accepted." : "Cannot reach the relay: " + e.message;
      return;
    }
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    start();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    clearTimeout(state.timer);
    clearTimeout(state.pendingTimer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "signed out");
    state.devices.clear();
    state.events.clear();
    state.lastSeq.clear();
    state.byRef.clear();
    state.byId.clear();
    state.selected = null;
    $("log").tBodies[0].replaceChildren();
    $("pending").tBodies[0].replaceChildren();
    $("app-view").hidden = true;
    $("signout").hidden = true;
    $("signin-view").hidden = false;
    $("signin-error").textContent = message || "";
    setConn("signed-out", "Signed out");
    $("key").focus();
  }

  function start() {
    $("signin-view").hidden = true;
    $("app-view").hidden = false;
    $("signout").hidden = false;
    route();
    connect();
  }

  // ---- live connection --------------------------------------------------

  function setConn(s, text) {
    const c = $("conn");
    c.dataset.state = s;
    c.textContent = text;
  }

  async function connect() {
    const key = state.key;
    if (!key) return;
    setConn("reconnecting", state.retry ? "Reconnecting…" : "Connecting…");
    let t;
    try {
      await loadDevices(); // pick up devices added since
      t = await api("POST", "/v1/tickets");
    } catch (e) {
      if (state.key !== key) return; // signed out (or in again) meanwhile
      if (e.status === 401) return signOut("The key is no longer valid.");
      return reconnectLater();
    }
    // Signed out, or in with another key, while the ticket was on its way:
    // this connection is no one's.
    if (state.key !== key) return;
    if (state.ws) state.ws.close(1000, "replaced");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/client?ticket=${encodeURIComponent(t.ticket)}`);
    state.ws = ws;
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      state.retry = 0;
      setConn("connected", "Live");
      for (const id of state.devices.keys()) {
        const after = state.lastSeq.get(id);
        send({ type: "subscribe", device: id, after });
      }
      // Re-attach to requests that were live when the last connection
      // dropped: the relay answers with their record now and pushes the
      // result when they end, even if that is minutes away.
      for (const [id, entry] of state.byId) {
        if (!terminal(entry.state)) send({ type: "get", id });
      }
      // Calls whose connection dropped before the relay named their
      // request: sent again with their key, the relay answers for the
      // request the first one made, or makes it if it never arrived.
      for (const entry of state.byRef.values()) {
        if (!entry.id && entry.state === "sending") send(entry.frame);
      }
    });
    ws.addEventListener("message", (ev) => {
      if (state.ws !== ws) return; // a socket signed out or replaced
      let f;
      try { f = JSON.parse(ev.data); } catch { return; }
      onFrame(f);
    });
    ws.addEventListener("close", (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      reconnectLater(ev.code);
    });
  }

  function reconnectLater(code) {
    if (!state.key) return;
    // Full jitter, 500 ms doubling up to 30 s.
    const cap = Math.min(30000, 500 * 2 ** Math.min(state.retry, 6));
    const delay = Math.random() * cap;
    state.retry++;
    setConn("reconnecting", `Disconnected${code ? " (" + code + ")" : ""}, retrying…`);
    clearTimeout(state.timer);
    state.timer = setTimeout(connect, delay);
  }

  // newKey returns a random idempotency key (crypto.randomUUID needs a
  // secure context, which a relay on a LAN address over http is not).
  function newKey() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    return "dash-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function send(frame) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  function onFrame(f) {
    switch (f.type) {
      case "accepted": {
        const entry = entryFor(f.ref, f.id, f.request);
        update(entry, f.request.state, f.request);
        break;
      }
      case "result": {
        const entry = entryFor(f.ref, f.id, f.request);
        entry.result = f.result;
        entry.error = f.error;
        update(entry, f.state, f.request);
        break;
      }
      case "event":
        addEvent(f);
        break;
      case "presence":
        presence(f);
        break;
      case "error": {
        const entry = (f.ref && state.byRef.get(f.ref)) || (f.id && state.byId.get(f.id));
        if (entry && f.id && f.code === "internal" && !entry.id) {
          // Stored or not, the request reached the device and may run:
          // follow it by its id rather than call it done.
          entry.id = f.id;
          state.byId.set(f.id, entry);
          entry.error = { code: f.code, message: f.message };
          update(entry, "delivered");
          send({ type: "get", id: f.id });
        } else if (entry) {
          entry.error = { code: f.code, message: f.message };
          update(entry, "error");
        } else {
          // A cancel from the pending list ("x" refs) or a call's error.
          $(f.ref && f.ref.startsWith("x") ? "pending-error" : "call-error").textContent = `${f.code}: ${f.message}`;
        }
        break;
      }
    }
  }

  // ---- devices ----------------------------------------------------------

  function presence(p) {
    let d = state.devices.get(p.device);
    if (!d) {
      d = { id: p.device };
      state.devices.set(p.device, d);
    }
    // The first presence of a subscription says where its stream starts;
    // a reconnect resumes from there, so no event in between is missed.
    if (p.seq !== undefined && !state.lastSeq.has(p.device)) state.lastSeq.set(p.device, p.seq);
    const cameOnline = p.online && !d.online;
    d.online = p.online;
    if (p.last_seen) d.last_seen = p.last_seen;
    renderDevices();
    if (state.selected === p.device) {
      renderDevice();
      loadPending(true);
    }
    // A reconnected agent may offer different capabilities.
    if (cameOnline) loadDevices().catch(() => {});
  }

  function when(ts) {
    if (!ts) return "never";
    const t = new Date(ts);
    const today = t.toDateString() === new Date().toDateString();
    return today ? t.toLocaleTimeString() : t.toLocaleString();
  }

  function renderDevices() {
    const ul = $("devices");
    const items = [...state.devices.values()].sort((a, b) => a.id.localeCompare(b.id));
    if (items.length === 0) {
      ul.replaceChildren(el("li", { class: "hint" }, "No devices registered. Add one with tether-relay device add ID."));
      return;
    }
    ul.replaceChildren(...items.map((d) => {
      const st = d.online ? "online" : "offline";
      const a = el("a", { href: "#/device/" + encodeURIComponent(d.id), "data-device": d.id, "data-online": String(!!d.online) },
        el("span", { class: "dot " + st, "aria-hidden": "true" }),
        el("span", { class: "name" }, d.id),
        el("span", { class: "badge " + st }, st),
        el("span", { class: "seen" }, d.online ? "connected, last seen " + when(d.last_seen) : "last seen " + when(d.last_seen)));
      if (state.selected === d.id) a.setAttribute("aria-current", "page");
      return el("li", {}, a);
    }));
  }

  function route() {
    const m = location.hash.match(/^#\/device\/(.+)$/);
    let id = null;
    if (m) {
      try {
        id = decodeURIComponent(m[1]);
      } catch {
        id = m[1]; // a malformed escape in a pasted link: shown as it is
      }
    }
    const changed = id !== state.selected;
    state.selected = id;
    renderDevices();
    renderDevice();
    if (changed && id) {
      $("pending").tBodies[0].replaceChildren();
      loadPending();
      $("device-h").focus();
    }
  }

  function renderDevice() {
    const d = state.selected && state.devices.get(state.selected);
    if (!d) {
      $("device-h").textContent = state.selected ? `Unknown device ${state.selected}` : "Select a device";
      $("device-detail").hidden = true;
      return;
    }
    $("device-h").textContent = d.id;
    $("device-detail").hidden = false;
    const facts = [
      ["State", d.online ? "online" : "offline"],
      ["Last seen", when(d.last_seen)],
      ["Board", d.board || "—"],
      ["Agent", d.agent || "—"],
      ["Queued", String(d.queued ?? 0)],
    ];
    $("device-info").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k.toLowerCase() }, v)]));

    const methods = d.methods || [];
    $("methods").replaceChildren(...methods.map((m) =>
      el("li", {}, el("button", { type: "button", onclick: () => pick(m), title: "Fill the call form" }, m))));
    $("method-list").replaceChildren(...methods.map((m) => el("option", { value: m })));

    const rows = (d.resources || []).map((r) => el("tr", {},
      el("td", {}, r.name), el("td", {}, r.kind),
      el("td", {}, r.available ? "yes" : "no" + (r.error ? ` (${r.error})` : "")),
      el("td", { class: "mono" }, r.info ? JSON.stringify(r.info) : "")));
    $("resources").tBodies[0].replaceChildren(...rows);
    $("resources-summary").textContent = `Resources (${rows.length}: ${[...new Set((d.resources || []).map((r) => r.kind))].join(", ") || "none"})`;
    renderEvents();
  }

  function pick(method) {
    $("method").value = method;
    $("params").value = JSON.stringify(EXAMPLES[method] || {}, null, 0);
    $("params").focus();
  }

  // ---- events -----------------------------------------------------------

  function addEvent(e) {
    const seen = state.lastSeq.get(e.device) || 0;
    if (e.seq <= seen) return; // replayed after a reconnect
    state.lastSeq.set(e.device, e.seq);
    const list = state.events.get(e.device) || [];
    list.push(e);
    if (list.length > MAX_EVENTS) list.shift();
    state.events.set(e.device, list);
    const d = state.devices.get(e.device);
    if (d) {
      d.last_seen = e.time;
      renderDevices();
    }
    if (state.selected === e.device) renderEvents();
  }

  function renderEvents() {
    const list = state.events.get(state.selected) || [];
    const ol = $("events");
    if (list.length === 0) {
      ol.replaceChildren(el("li", { class: "empty" }, "No events since this page opened."));
      return;
    }
    ol.replaceChildren(...list.slice().reverse().map((e) =>
      el("li", { "data-seq": String(e.seq), "data-name": e.name },
        `${new Date(e.time).toLocaleTimeString()}  #${e.seq}  ${e.name}  ${e.data ? JSON.stringify(e.data) : ""}`)));
  }

  // ---- pending requests ---------------------------------------------------

  // loadPending reads the selected device's unfinished requests (REST:
  // another client's submissions are not seen live). soon waits a moment,
  // for changes seen live, which come in bursts.
  function loadPending(soon) {
    clearTimeout(state.pendingTimer);
    state.pendingTimer = setTimeout(async () => {
      const id = state.selected;
      const key = state.key;
      if (!id || !key || !state.devices.has(id)) return;
      try {
        const { requests } = await api("GET", "/v1/devices/" + encodeURIComponent(id) + "/requests");
        // Not after a sign-out, or for another device.
        if (id !== state.selected || key !== state.key) return;
        $("pending-error").textContent = "";
        renderPending(requests || []);
        // The device list's count is from its last load: this one is newer.
        const d = state.devices.get(id);
        const fact = document.querySelector('#device-info [data-fact="queued"]');
        if (d) d.queued = (requests || []).filter((r) => r.state === "queued").length;
        if (d && fact) fact.textContent = String(d.queued);
      } catch (e) {
        if (id === state.selected && key === state.key) $("pending-error").textContent = "Pending requests not loaded: " + e.message;
      }
    }, soon ? 250 : 0);
  }

  function renderPending(list) {
    const body = $("pending").tBodies[0];
    if (list.length === 0) {
      body.replaceChildren(el("tr", { class: "empty" }, el("td", { colSpan: 6 }, "Nothing pending.")));
      return;
    }
    body.replaceChildren(...list.map((r) => el("tr", { "data-id": r.id, "data-state": r.state },
      el("td", {}, when(r.created)),
      el("td", { class: "mono", title: r.params ? JSON.stringify(r.params) : "" }, r.method),
      el("td", { class: "state state-" + r.state }, r.state),
      el("td", {}, String(r.attempts)),
      el("td", { class: "id" }, r.id),
      el("td", {}, el("button", { type: "button", class: "secondary", "aria-label": "Cancel request " + r.id, onclick: () => cancelPending(r.id) }, "Cancel")))));
  }

  // cancelPending cancels on the live socket, so the request's end shows in
  // the request log like a call's.
  function cancelPending(id) {
    $("pending-error").textContent = "";
    if (!send({ type: "cancel", ref: "x" + ++state.refN, id })) {
      $("pending-error").textContent = "Not connected to the relay; try again in a moment.";
    }
  }

  // ---- calls and the request log -----------------------------------------

  function terminal(s) {
    return s === "succeeded" || s === "failed" || s === "expired" || s === "canceled" || s === "error";
  }

  function call(ev) {
    ev.preventDefault();
    const err = $("call-error");
    err.textContent = "";
    const device = state.selected;
    const method = $("method").value.trim();
    let params;
    const text = $("params").value.trim();
    if (text) {
      try { params = JSON.parse(text); } catch (e) {
        err.textContent = "Params are not valid JSON: " + e.message;
        $("params").focus();
        return;
      }
    }
    const ref = "r" + ++state.refN;
    // The key lets the call be sent again after a lost connection without
    // running it twice (see the socket's open handler).
    const frame = { type: "call", ref, device, method, params, key: newKey() };
    const timeout = $("timeout").value.trim();
    if (timeout) frame.timeout = /^\d+$/.test(timeout) ? Number(timeout) : timeout;
    if ($("idempotent").checked) frame.idempotent = true;
    if (!send(frame)) {
      err.textContent = "Not connected to the relay; try again in a moment.";
      return;
    }
    const entry = { ref, id: null, device, method, params, state: "sending", created: new Date().toISOString(), frame };
    state.byRef.set(ref, entry);
    addRow(entry);
  }

  function entryFor(ref, id, rec) {
    let entry = (id && state.byId.get(id)) || (ref && state.byRef.get(ref));
    if (!entry) {
      // A request this tab did not start (re-attached by id).
      entry = { ref, id, device: rec.device, method: rec.method, params: rec.params, state: rec.state, created: rec.created };
      addRow(entry);
    }
    if (id && !entry.id) {
      entry.id = id;
    }
    if (id) state.byId.set(id, entry);
    return entry;
  }

  function addRow(entry) {
    const tr = el("tr", {});
    entry.tr = tr;
    const body = $("log").tBodies[0];
    body.prepend(tr);
    while (body.rows.length > MAX_LOG) body.deleteRow(-1);
    renderRow(entry);
  }

  function update(entry, st, rec) {
    // A late "accepted" must not undo a result.
    if (terminal(entry.state) && !terminal(st)) return;
    entry.state = st;
    if (rec && rec.state === "succeeded" && rec.result !== undefined) entry.result = rec.result;
    if (rec && rec.error) entry.error = rec.error;
    renderRow(entry);
    if (entry.device === state.selected) loadPending(true);
  }

  function renderRow(e) {
    const tr = e.tr;
    tr.dataset.state = e.state;
    if (e.id) tr.dataset.id = e.id;
    tr.dataset.method = e.method;
    let out = "";
    if (e.state === "succeeded") out = e.result === undefined ? "" : JSON.stringify(e.result);
    else if (e.error) out = `${e.error.code}: ${e.error.message}`;
    tr.replaceChildren(
      el("td", {}, new Date(e.created).toLocaleTimeString()),
      el("td", {}, e.device || ""),
      el("td", { class: "mono", title: e.params ? JSON.stringify(e.params) : "" }, e.method),
      el("td", { class: "state state-" + e.state }, e.state),
      el("td", { class: "result" }, out),
      el("td", { class: "id" }, e.id || "…"));
  }

  // ---- wiring -----------------------------------------------------------

  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("call").addEventListener("submit", call);
  $("refresh").addEventListener("click", () => loadDevices().catch(() => {}));
  $("pending-reload").addEventListener("click", () => loadPending());
  window.addEventListener("hashchange", route);
  if (state.key) {
    start();
  } else {
    $("key").focus();
  }
})();
