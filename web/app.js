// Vireo web console: the pages of docs/console-web.md, on the daemon's REST API (no build step).
"use strict";

const POLL_MS = 2000;
const POINTS = 60;
let cleanups = [];

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

let packageNote = null;   // set at load when Chart.js or xterm.js is missing; stays up

function banner(text) {
  const b = document.getElementById("banner");
  text = text || packageNote;
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false; b.textContent = text;
}

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, body) {
  const opts = { method, headers: { "X-Vireo-CSRF": "1" }, credentials: "same-origin" };
  if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
  let r;
  try { r = await fetch(path, opts); } catch (e) {
    throw new APIError(0, "unreachable", "the daemon does not answer (" + e.message + ")");
  }
  if (r.status === 401) { location.assign("/ui/login?reason=expired"); throw new APIError(401, "unauthorized", "logged out"); }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) throw new APIError(r.status, data && data.code, (data && data.message) || (method + " " + path + ": HTTP " + r.status));
  return data;
}

function every(ms, fn) {
  let stopped = false;
  const tick = async () => { if (stopped) return; try { await fn(); } finally { if (!stopped) t = setTimeout(tick, ms); } };
  let t = setTimeout(tick, 0);
  cleanups.push(() => { stopped = true; clearTimeout(t); });
}

function setStatus(el, text, isError) {
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

// MARK: router

const routes = [
  [/^#\/host$/, hostView], [/^#\/vms$/, vmsView], [/^#\/vms\/([a-z0-9][a-z0-9-]{0,62})$/, vmView],
  [/^#\/images$/, imagesView], [/^#\/templates$/, templatesView],
];

function navigate() {
  for (const f of cleanups) { try { f(); } catch (e) { /* already gone */ } }
  cleanups = [];
  const hash = location.hash || "#/host";
  const main = document.getElementById("main");
  main.replaceChildren();
  const section = hash.split("/")[1] || "host";
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.id === "nav-" + section) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [re, view] of routes) {
    const m = hash.match(re);
    if (m) { view(main, ...m.slice(1)); return; }
  }
  main.append(h("h1", { text: "No such page" }), h("p", {}, "Nothing lives at " + hash + ". ", h("a", { href: "#/host", text: "Go to the host view" })));
}

// MARK: host

function hostView(main) {
  document.title = "Host - Vireo";
  const cards = h("div", { class: "cards", id: "host-cards" });
  const usage = h("tbody", { id: "host-usage" });
  const events = h("ul", { class: "events", id: "events", "aria-live": "polite" });
  main.append(h("h1", { text: "Host" }), cards,
    h("h2", { text: "Memory of running VMs" }),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ["VM", "state", "provisioned", "consumed", "active"].map(t => h("th", { text: t })))), usage)),
    h("h2", { text: "Events (live)" }), events);
  const card = (k, v) => h("div", { class: "card" }, h("div", { class: "k", text: k }), h("div", { class: "v", text: v }));
  every(POLL_MS * 2, async () => {
    let host, list;
    try { [host, list] = await Promise.all([api("GET", "/v1/host"), api("GET", "/v1/vms")]); }
    catch (e) { banner(e.message); return; }
    banner(null);
    const running = list.vms.filter(v => v.state === "running" || v.state === "paused");
    const stats = await Promise.all(running.slice(0, 50).map(v => api("GET", "/v1/vms/" + v.name + "/stats").catch(() => null)));
    const consumed = stats.reduce((s, x) => s + ((x && x.memory.consumed_bytes) || 0), 0);
    cards.replaceChildren(
      card("host", host.hostname), card("version", host.version), card("KVM", host.kvm ? "yes" : "no"),
      card("physical CPUs", host.pcpus), card("vCPUs provisioned", host.vcpus_provisioned),
      card("vCPU:pCPU", host.vcpu_overcommit_ratio.toFixed(2)),
      card("memory physical", bytes(host.memory_physical_bytes)), card("memory provisioned", bytes(host.memory_provisioned_bytes)),
      card("memory consumed", bytes(consumed)), card("VMs", host.vms_total + " (" + host.vms_running + " running)"),
      card("data directory", host.data_dir));
    usage.replaceChildren(...running.map((v, i) => {
      const m = stats[i] && stats[i].memory;
      return h("tr", {}, h("td", {}, h("a", { href: "#/vms/" + v.name, text: v.name })), h("td", {}, stateBadge(v.state)),
        h("td", { text: bytes(v.memory_mib * 1048576) }), h("td", { text: m ? bytes(m.consumed_bytes) : "–" }),
        h("td", { text: m && m.active_bytes !== undefined ? bytes(m.active_bytes) : (m ? m.active_status : "–") }));
    }));
    if (running.length === 0) usage.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No VM is running." })));
  });
  followEvents(events);
}

function followEvents(list) {
  const ctrl = new AbortController();
  cleanups.push(() => ctrl.abort());
  (async () => {
    let r;
    try { r = await fetch("/v1/events?follow=true", { signal: ctrl.signal, credentials: "same-origin" }); } catch (e) { return; }
    if (r.status === 401) { location.assign("/ui/login?reason=expired"); return; }
    if (!r.ok || !r.body) { list.append(h("li", { text: "The event stream is not available (HTTP " + r.status + ")." })); return; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      let chunk;
      try { chunk = await reader.read(); } catch (e) { return; }
      if (chunk.done) { list.prepend(h("li", { class: "muted", text: "The event stream ended (the daemon stopped?). Reload the page to follow again." })); return; }
      buf += dec.decode(chunk.value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
        if (!line.trim()) continue;
        let ev; try { ev = JSON.parse(line); } catch (e) { continue; }
        const who = ev.subject || ev.vm || "";
        list.prepend(h("li", {}, h("time", { text: (ev.time || "").replace("T", " ").replace(/\.\d+Z$/, "Z") }),
          (ev.subject_kind === "vm" && who) ? h("a", { href: "#/vms/" + who, text: who }) : who, " ",
          h("strong", { text: ev.type || "" }), ev.message ? " – " + ev.message : ""));
        while (list.children.length > 50) list.lastChild.remove();
      }
    }
  })();
}

function stateBadge(state) { return h("span", { class: "state state-" + state, text: state }); }

// MARK: VM list and create

function vmsView(main) {
  document.title = "VMs - Vireo";
  const tbody = h("tbody", { id: "vm-rows" });
  const source = h("select", { id: "create-source", name: "source" });
  const status = h("p", { class: "status", id: "create-status", role: "status" });
  const form = h("form", { class: "row", id: "create-form", "aria-label": "Create a VM" },
    h("label", {}, "Name", h("input", { id: "create-name", name: "name", required: true, pattern: "[a-z0-9][a-z0-9\\-]{0,62}", autocomplete: "off", title: "lower-case letters, digits and dashes" })),
    h("label", {}, "From", source),
    h("label", {}, "vCPUs", h("input", { id: "create-vcpus", name: "vcpus", type: "number", min: 1, max: 64, placeholder: "default" })),
    h("label", {}, "Memory MiB", h("input", { id: "create-memory", name: "memory", type: "number", min: 16, placeholder: "default" })),
    h("button", { type: "submit", class: "primary", id: "create-submit", text: "Create" }));
  main.append(h("h1", { text: "Virtual machines" }),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {},
      h("th", { text: "name" }), h("th", { text: "state" }), h("th", { text: "vCPUs" }), h("th", { text: "memory" }), h("th", { class: "wide", text: "boots" }))), tbody)),
    h("h2", { text: "Create a VM" }), form, status);
  api("GET", "/v1/templates").then(t => {
    const groups = [h("optgroup", { label: "Templates" }, t.templates.map(x => h("option", { value: "template:" + x.name, text: x.name }))),
      h("optgroup", { label: "Probe guest (no OS, runs anywhere)" },
        h("option", { value: "probe:echo", text: "probe: serial console echo" }),
        h("option", { value: "probe:dirty", text: "probe: writes its memory forever" }))];
    source.replaceChildren(...groups);
    const wanted = sessionStorage.getItem("vireo-create-template");
    if (wanted) { source.value = "template:" + wanted; sessionStorage.removeItem("vireo-create-template"); }
  }).catch(e => setStatus(status, e.message, true));
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const name = form.querySelector("#create-name").value.trim();
    const [kind, what] = source.value.split(/:(.*)/s);
    const body = { name };
    if (kind === "template") body.template = what; else { body.probe = what; body.memory_mib = 16; }
    const vcpus = form.querySelector("#create-vcpus").value, mem = form.querySelector("#create-memory").value;
    if (vcpus) body.vcpus = Number(vcpus);
    if (mem) body.memory_mib = Number(mem);
    setStatus(status, "Creating " + name + "…");
    try { await api("POST", "/v1/vms", body); location.hash = "#/vms/" + name; }
    catch (e) { setStatus(status, "Not created: " + e.message, true); }
  });
  every(POLL_MS * 2, async () => {
    let list;
    try { list = await api("GET", "/v1/vms"); } catch (e) { banner(e.message); return; }
    banner(null);
    tbody.replaceChildren(...list.vms.map(v => h("tr", { "data-vm": v.name },
      h("td", {}, h("a", { href: "#/vms/" + v.name, text: v.name })), h("td", {}, stateBadge(v.state)),
      h("td", { text: v.vcpus }), h("td", { text: v.memory_mib + " MiB" }),
      h("td", { class: "wide", text: v.template ? "template " + v.template : v.probe ? "probe " + v.probe : (v.kernel || "") }))));
    if (list.vms.length === 0) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No VMs yet: create one below." })));
  });
}

// MARK: one VM

function vmView(main, name) {
  document.title = name + " - Vireo";
  const badge = h("span", { id: "vm-state" });
  const status = h("p", { class: "status", id: "vm-status", role: "status" });
  const facts = h("dl", { class: "facts", id: "vm-facts" });
  const snapRows = h("tbody", { id: "snapshot-rows" });
  const snapName = h("input", { id: "snapshot-name", "aria-label": "Snapshot name", placeholder: "snapshot name", pattern: "[a-z0-9][a-z0-9\\-]{0,62}" });
  const b = {};
  const act = (id, label, fn, cls) => (b[id] = h("button", { id: "btn-" + id, type: "button", class: cls, text: label, disabled: true, onclick: () => run(label, fn) }));
  const chartsBox = h("div", { class: "charts", id: "charts" });
  const termBox = h("div", { class: "terminal", id: "terminal", hidden: true });
  const consoleStatus = h("p", { class: "status", id: "console-status", role: "status" });
  let vm = null, gone = false, consoleReattach = () => {};

  async function run(label, fn) {
    setStatus(status, label + "…");
    for (const x of Object.values(b)) x.disabled = true;
    try { await fn(); setStatus(status, label + ": done"); } catch (e) { setStatus(status, label + " failed: " + e.message, true); }
    await refresh();
  }
  const path = "/v1/vms/" + name;
  main.append(h("p", {}, h("a", { href: "#/vms", text: "← all VMs" })), h("h1", {}, name, " ", badge),
    h("div", { class: "buttons", role: "group", "aria-label": "Lifecycle" },
      act("start", "Start", () => api("POST", path + "/start"), "primary"),
      act("stop", "Stop", () => api("POST", path + "/stop")),
      act("kill", "Force stop", () => api("POST", path + "/stop?force=true")),
      act("pause", "Pause", () => api("POST", path + "/pause")),
      act("resume", "Resume", () => api("POST", path + "/resume")),
      act("delete", "Delete…", async () => {
        if (!(await confirmDialog("Delete VM " + name + "? Its definition, logs and disks made for it go; this cannot be undone."))) throw new Error("cancelled");
        await api("DELETE", path); location.hash = "#/vms";
      }, "danger")),
    status, facts,
    h("h2", { text: "Live figures" }), chartsBox,
    h("h2", { text: "Serial console" }),
    h("div", { class: "buttons" }, h("button", { id: "btn-console", type: "button", text: "Open console", onclick: openConsole })),
    consoleStatus, termBox,
    h("h2", { text: "Snapshots" }),
    h("form", { class: "row", id: "snapshot-form", onsubmit: ev => { ev.preventDefault(); const n = snapName.value.trim(); run("Snapshot", () => api("POST", path + "/snapshots", { name: n })); } },
      snapName, (b.snapshot = h("button", { id: "btn-snapshot", type: "submit", text: "Take snapshot", disabled: true }))),
    h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {}, ["name", "taken", "state", "size", ""].map(t => h("th", { text: t })))), snapRows)));

  const charts = makeCharts(chartsBox);
  let last = null;

  async function refresh() {
    if (gone) return;
    try { vm = await api("GET", path); }
    catch (e) {
      if (e.status === 404) {
        gone = true;
        main.replaceChildren(h("h1", { text: name }), h("p", { class: "notice", role: "alert", id: "vm-gone" },
          "VM " + name + " does not exist (any more: deleted?). "), h("p", {}, h("a", { href: "#/vms", text: "Back to the VM list" })));
        for (const f of cleanups) { try { f(); } catch (x) { /* gone */ } }
        cleanups = [];
        return;
      }
      setStatus(status, e.message, true); return;
    }
    const s = vm.state;
    badge.replaceChildren(stateBadge(s));
    b.start.disabled = !(s === "stopped" || s === "failed");
    b.stop.disabled = !(s === "running" || s === "paused");
    b.kill.disabled = b.stop.disabled;
    b.pause.disabled = s !== "running";
    b.resume.disabled = s !== "paused";
    b.delete.disabled = !(s === "stopped" || s === "failed");
    b.snapshot.disabled = !(s === "running" || s === "paused");
    consoleReattach();
    facts.replaceChildren(...[["vCPUs", vm.vcpus], ["memory", vm.memory_mib + " MiB"],
      ["boots", vm.template ? "template " + vm.template : vm.probe ? "probe guest: " + vm.probe : vm.kernel],
      ["disks", (vm.disks || []).map(d => d.path).join(", ") || "none"], ["NICs", (vm.nics || []).length],
      ["restart policy", vm.restart_policy], ["pid", vm.pid || "–"], ["last reason", vm.reason || "–"]]
      .flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: String(v) })]));
    try {
      const snaps = await api("GET", path + "/snapshots");
      snapRows.replaceChildren(...snaps.snapshots.map(x => h("tr", {}, h("td", { text: x.name }), h("td", { text: x.created_at }),
        h("td", { text: x.vm_state }), h("td", { text: bytes(x.size_bytes) }),
        h("td", {}, h("button", { type: "button", text: "Revert", "aria-label": "Revert to " + x.name, onclick: () => run("Revert to " + x.name, () => api("POST", path + "/snapshots/" + x.name + "/revert")) }), " ",
          h("button", { type: "button", text: "Delete", "aria-label": "Delete snapshot " + x.name, onclick: () => run("Delete snapshot " + x.name, async () => {
            if (!(await confirmDialog("Delete snapshot " + x.name + " of " + name + "?"))) throw new Error("cancelled");
            await api("DELETE", path + "/snapshots/" + x.name);
          }) })))));
      if (snaps.snapshots.length === 0) snapRows.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No snapshots." })));
    } catch (e) { /* a VM being deleted: the next refresh says so */ }
  }

  async function sample() {
    if (gone || !vm || !(vm.state === "running" || vm.state === "paused")) { last = null; return; }
    let st;
    try { st = await api("GET", path + "/stats"); } catch (e) { last = null; return; }
    const now = performance.now() / 1000;
    const cpu = st.vcpus.reduce((a, v) => a + v.cpu_seconds, 0), ready = st.vcpus.reduce((a, v) => a + v.ready_seconds, 0);
    const sum = (xs, k) => xs.reduce((a, x) => a + (x[k] || 0), 0);
    const cur = { t: now, cpu, ready, dr: sum(st.disks, "read_bytes"), dw: sum(st.disks, "write_bytes"), rx: sum(st.nics, "rx_bytes"), tx: sum(st.nics, "tx_bytes") };
    const label = new Date().toLocaleTimeString();
    const mib = x => x === undefined || x === null ? null : x / 1048576;
    push(charts.memory, label, [mib(st.memory.provisioned_bytes), mib(st.memory.consumed_bytes), mib(st.memory.active_bytes)]);
    if (last) {
      const dt = Math.max(cur.t - last.t, 0.001);
      const rate = k => Math.max(0, (cur[k] - last[k]) / dt);
      push(charts.cpu, label, [100 * rate("cpu"), 100 * rate("ready")]);
      push(charts.disk, label, [rate("dr") / 1024, rate("dw") / 1024]);
      push(charts.net, label, [rate("rx") / 1024, rate("tx") / 1024]);
    }
    last = cur;
  }

  every(POLL_MS, async () => { await refresh(); await sample(); });

  // The console: once opened it stays wanted; when its websocket closes (the VM stopped or
  // rebooted into a new VMM) it attaches again as soon as the VM runs.
  let term = null, ws = null, consoleWanted = false;
  function openConsole() {
    if (!window.Terminal) { setStatus(consoleStatus, "The terminal is unavailable: the host lacks Debian's libjs-xterm and node-xterm (apt-get install libjs-xterm node-xterm).", true); return; }
    consoleWanted = true;
    const enc = new TextEncoder();
    if (!term) {
      termBox.hidden = false;
      term = new Terminal({ rendererType: "dom", cursorBlink: true, rows: 20, scrollback: 2000 });
      term.open(termBox);
      term.on("data", d => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc.encode(d)); });
      cleanups.push(() => { consoleWanted = false; if (ws) ws.close(); term.destroy(); });
    }
    if (ws) return;
    const dec = new TextDecoder();
    const sock = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path + "/console/attach");
    ws = sock;
    sock.binaryType = "arraybuffer";
    sock.onopen = () => { setStatus(consoleStatus, "Connected to " + name + "'s serial console."); term.focus(); };
    sock.onmessage = e => term.write(typeof e.data === "string" ? e.data : dec.decode(new Uint8Array(e.data), { stream: true }));
    sock.onclose = e => {
      if (ws === sock) ws = null;
      setStatus(consoleStatus, "Console closed" + (e.reason ? ": " + e.reason : " (is the VM running?)") + ". It attaches again when the VM runs.", !e.wasClean);
    };
  }
  consoleReattach = () => { if (consoleWanted && !ws && vm && vm.state === "running") openConsole(); };
}

function makeCharts(box) {
  const out = {};
  const defs = [["cpu", "CPU (% of one host CPU)", ["CPU", "ready"]], ["memory", "Memory (MiB)", ["provisioned", "consumed", "active"]],
    ["disk", "Disk (KiB/s)", ["read", "write"]], ["net", "Network (KiB/s)", ["rx", "tx"]]];
  const colors = ["#1f6feb", "#d97706", "#1a7f37", "#b42318"];
  for (const [id, title, series] of defs) {
    const canvas = h("canvas", { id: "chart-" + id, role: "img", "aria-label": title });
    box.append(h("div", { class: "chart" }, canvas));
    if (!window.Chart) continue;
    out[id] = new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: series.map((s, i) => ({ label: s, data: [], borderColor: colors[i], backgroundColor: colors[i], pointRadius: 0, tension: 0.2, spanGaps: true })) },
      options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { title: { display: true, text: title } }, scales: { y: { beginAtZero: true } } },
    });
  }
  if (!window.Chart) box.append(h("p", { class: "notice", text: "Charts are unavailable: the host lacks Debian's libjs-chart.js (apt-get install libjs-chart.js)." }));
  return out;
}

function push(chart, label, values) {
  if (!chart) return;
  chart.data.labels.push(label);
  values.forEach((v, i) => chart.data.datasets[i].data.push(v));
  if (chart.data.labels.length > POINTS) { chart.data.labels.shift(); for (const d of chart.data.datasets) d.data.shift(); }
  chart.update();
}

function confirmDialog(text) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise(resolve => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.returnValue = "";
    d.showModal();
  });
}

// MARK: images and templates

function imagesView(main) {
  document.title = "Images - Vireo";
  const tbody = h("tbody", { id: "image-rows" });
  main.append(h("h1", { text: "Images" }), h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {},
    ["name", "format", "state", "virtual size", "on disk", "used by"].map(t => h("th", { text: t })))), tbody)));
  every(POLL_MS * 3, async () => {
    let list; try { list = await api("GET", "/v1/images"); } catch (e) { banner(e.message); return; }
    tbody.replaceChildren(...list.images.map(i => h("tr", {}, h("td", { text: i.name }), h("td", { text: i.format }),
      h("td", { text: i.state + (i.progress_percent !== undefined ? " " + i.progress_percent + "%" : "") }),
      h("td", { text: bytes(i.virtual_size_bytes) }), h("td", { text: bytes(i.actual_size_bytes) }),
      h("td", { text: [...(i.used_by_vms || []), ...(i.used_by_templates || [])].join(", ") || "–" }))));
    if (list.images.length === 0) tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: "No images (vireo image import)." })));
  });
}

function templatesView(main) {
  document.title = "Templates - Vireo";
  const tbody = h("tbody", { id: "template-rows" });
  main.append(h("h1", { text: "Templates" }), h("div", { class: "scroll" }, h("table", {}, h("thead", {}, h("tr", {},
    ["name", "vCPUs", "memory", "base disk", ""].map(t => h("th", { text: t })))), tbody)));
  every(POLL_MS * 3, async () => {
    let list; try { list = await api("GET", "/v1/templates"); } catch (e) { banner(e.message); return; }
    tbody.replaceChildren(...list.templates.map(t => h("tr", {}, h("td", { text: t.name }), h("td", { text: t.vcpus }),
      h("td", { text: t.memory_mib + " MiB" }), h("td", { text: t.base_image || t.base_disk || "–" }),
      h("td", {}, h("button", { type: "button", text: "Create VM", "aria-label": "Create a VM from " + t.name, onclick: () => {
        sessionStorage.setItem("vireo-create-template", t.name); location.hash = "#/vms"; } })))));
    if (list.templates.length === 0) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "muted", text: "No templates (vireo template create)." })));
  });
}

window.addEventListener("hashchange", navigate);
window.addEventListener("DOMContentLoaded", () => {
  const missing = [];
  if (!window.Chart) missing.push("libjs-chart.js");
  if (!window.Terminal) missing.push("libjs-xterm");
  if (missing.length) packageNote = "This host lacks Debian's " + missing.join(" and ") + ": charts or the console are off. Install: apt-get install " + missing.join(" ");
  banner(null);
  navigate();
});
