// The usermetadb dashboard: every page is filled from the server's API,
// reached through this dashboard's own proxy (/proxy/<endpoint>), which
// adds the administrator's client certificate. No inline script, no asset
// from elsewhere: the Content-Security-Policy allows neither.
"use strict";

const TOKEN = document.querySelector('meta[name="ui-token"]').content;
const MAIN = document.getElementById("main");
const PAGE = document.body.dataset.page;

// ---- small helpers -------------------------------------------------------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

async function api(endpoint, body) {
  const resp = await fetch("/proxy/" + endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-UI-Token": TOKEN },
    body: JSON.stringify(body || {}),
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    let msg = data && data.error ? data.error : "HTTP " + resp.status;
    if (resp.status === 403 && msg === "forbidden") {
      // The server's ACL: a certificate scoped to tenants sees only their users.
      msg = "not allowed for this certificate (another tenant's user, a user of no tenant, or outside its ACL)";
    }
    throw new Error(endpoint + ": " + msg);
  }
  return data;
}

function status(target, text, kind) {
  target.textContent = text;
  target.className = "status" + (kind ? " " + kind : "");
}

function day(d) {
  return d.toISOString().slice(0, 10);
}

function daysAgo(n) {
  return new Date(Date.now() - n * 86400000);
}

function when(ts) {
  if (!ts) return "";
  return ts.replace("T", " ").replace(/:00Z$/, "").replace("Z", "");
}

function duration(secs) {
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return h + "h" + String(m).padStart(2, "0");
}

function param(name) {
  return new URLSearchParams(location.search).get(name) || "";
}

function download(name, type, data) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- exports: CSV (RFC 4180) and XLSX ------------------------------------

// A cell a spreadsheet would read as a formula (=, +, -, @) or that starts
// with a tab or CR gets a leading ' so that it stays text, as OWASP's CSV
// injection guidance says; every CSV the dashboard writes goes through csv().
function csvText(v) {
  const s = String(v);
  return /^[=+\-@\t\r]/.test(s) ? "'" + s : s;
}

function csv(header, rows) {
  const cell = (v) => {
    const s = csvText(v);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  };
  return [header, ...rows].map((r) => r.map(cell).join(",")).join("\r\n") + "\r\n";
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A zip of stored (uncompressed) entries: enough for an XLSX.
function zip(files) {
  const enc = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const [name, text] of files) {
    const nameBytes = enc.encode(name);
    const data = enc.encode(text);
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(8, 0, true); // stored
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, nameBytes.length, true);
    parts.push(new Uint8Array(local.buffer), nameBytes, data);
    const dir = new DataView(new ArrayBuffer(46));
    dir.setUint32(0, 0x02014b50, true);
    dir.setUint16(4, 20, true);
    dir.setUint16(6, 20, true);
    dir.setUint32(16, crc, true);
    dir.setUint32(20, data.length, true);
    dir.setUint32(24, data.length, true);
    dir.setUint16(28, nameBytes.length, true);
    dir.setUint32(42, offset, true);
    central.push(new Uint8Array(dir.buffer), nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = central.reduce((n, p) => n + p.length, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, files.length, true);
  end.setUint16(10, files.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, new Uint8Array(end.buffer)], {
    type: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  });
}

// Characters XML 1.0 forbids: C0 controls other than tab, LF and CR,
// U+FFFE, U+FFFF, and (with the u flag, which pairs surrogates) lone
// surrogates. One of them would make the whole sheet unreadable: dropped.
const XML_FORBIDDEN = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\uFFFE\uFFFF\uD800-\uDFFF]/gu;

function xmlEscape(s) {
  return String(s)
    .replace(XML_FORBIDDEN, "")
    .replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]);
}

function xlsx(header, rows) {
  const colName = (i) => {
    let s = "";
    for (i += 1; i > 0; i = Math.floor((i - 1) / 26)) s = String.fromCharCode(65 + ((i - 1) % 26)) + s;
    return s;
  };
  // Every cell is an inline string (t="inlineStr"): a spreadsheet shows it
  // as text and never evaluates it, so "=..." needs no ' here, unlike CSV.
  const sheetRows = [header, ...rows]
    .map((r, ri) => {
      const cells = r
        .map((v, ci) => `<c r="${colName(ci)}${ri + 1}" t="inlineStr"><is><t xml:space="preserve">${xmlEscape(v)}</t></is></c>`)
        .join("");
      return `<row r="${ri + 1}">${cells}</row>`;
    })
    .join("");
  const x = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n';
  return zip([
    ["[Content_Types].xml", x + '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>'],
    ["_rels/.rels", x + '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'],
    ["xl/workbook.xml", x + '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="events" sheetId="1" r:id="rId1"/></sheets></workbook>'],
    ["xl/_rels/workbook.xml.rels", x + '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/></Relationships>'],
    ["xl/worksheets/sheet1.xml", x + `<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>${sheetRows}</sheetData></worksheet>`],
  ]);
}

// ---- a sortable table with a column choice kept in localStorage -----------

class Table {
  // columns: [{ key, label, get(row) -> text, link?(row) -> href }]
  constructor(id, columns) {
    this.id = id;
    this.columns = columns;
    this.rows = [];
    this.sort = { key: null, dir: 1 };
    const saved = localStorage.getItem("usermetadb.columns." + id);
    const keys = columns.map((c) => c.key);
    this.visible = saved ? JSON.parse(saved).filter((k) => keys.includes(k)) : keys;
    if (this.visible.length === 0) this.visible = keys;
    this.chooser = el("details", { class: "columns" }, el("summary", { text: "Columns" }));
    for (const c of columns) {
      const box = el("input", {
        type: "checkbox",
        "data-column": c.key,
        checked: this.visible.includes(c.key),
        onchange: () => this.toggle(c.key, box.checked),
      });
      this.chooser.append(el("label", {}, box, " " + c.label));
    }
    this.table = el("table", { id: id, class: "data" });
    this.root = el("div", { class: "table" }, this.chooser, this.table);
  }

  toggle(key, on) {
    const order = this.columns.map((c) => c.key);
    this.visible = order.filter((k) => (k === key ? on : this.visible.includes(k)));
    localStorage.setItem("usermetadb.columns." + this.id, JSON.stringify(this.visible));
    this.render();
  }

  set(rows) {
    this.rows = rows;
    this.render();
  }

  shown() {
    return this.columns.filter((c) => this.visible.includes(c.key));
  }

  // The rows on screen, in their order, as text of the visible columns.
  onScreen() {
    const cols = this.shown();
    let rows = this.rows.slice();
    if (this.sort.key) {
      const c = this.columns.find((x) => x.key === this.sort.key);
      rows.sort((a, b) => {
        const x = c.get(a), y = c.get(b);
        const nx = Number(x), ny = Number(y);
        const cmp = x !== "" && y !== "" && !isNaN(nx) && !isNaN(ny) ? nx - ny : String(x).localeCompare(String(y));
        return cmp * this.sort.dir;
      });
    }
    return { cols, rows, text: rows.map((r) => cols.map((c) => String(c.get(r)))) };
  }

  render() {
    const { cols, rows } = this.onScreen();
    const head = el(
      "tr",
      {},
      cols.map((c) =>
        el(
          "th",
          {
            "data-key": c.key,
            class: "sortable",
            "aria-sort": this.sort.key === c.key ? (this.sort.dir > 0 ? "ascending" : "descending") : "none",
            onclick: () => {
              this.sort = { key: c.key, dir: this.sort.key === c.key ? -this.sort.dir : 1 };
              this.render();
            },
          },
          c.label
        )
      )
    );
    const body = rows.map((r) =>
      el(
        "tr",
        {},
        cols.map((c) => {
          const text = String(c.get(r));
          const href = c.link ? c.link(r) : null;
          const node = c.node ? c.node(r) : null;
          return el("td", { "data-key": c.key }, node || (href ? el("a", { href }, text) : text));
        })
      )
    );
    this.table.replaceChildren(el("thead", {}, head), el("tbody", {}, body));
    if (rows.length === 0) {
      this.table.append(el("tbody", {}, el("tr", {}, el("td", { colspan: cols.length || 1, class: "empty", text: "Nothing to show." }))));
    }
  }

  exportButtons(name) {
    const data = () => {
      const { cols, text } = this.onScreen();
      return [cols.map((c) => c.label), text];
    };
    return el(
      "span",
      { class: "export" },
      el("button", { type: "button", id: this.id + "-csv", onclick: () => { const [h, r] = data(); download(name + ".csv", "text/csv", csv(h, r)); } }, "Export CSV"),
      el("button", { type: "button", id: this.id + "-xlsx", onclick: () => { const [h, r] = data(); download(name + ".xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", xlsx(h, r)); } }, "Export XLSX")
    );
  }
}

const userLink = (r) => "/user?u=" + encodeURIComponent(r.username);

function eventColumns(withUser) {
  const cols = [
    { key: "time", label: "Time (UTC)", get: (r) => when(r.timestamp) },
    { key: "user", label: "User", get: (r) => r.username, link: userLink },
    { key: "type", label: "Type", get: (r) => r.log_type },
    { key: "service", label: "Service", get: (r) => r.service || "" },
    { key: "device", label: "Device / computer", get: (r) => (r.device_info ? r.device_info.id : "") },
    { key: "country", label: "Country", get: (r) => (r.device_info ? r.device_info.remote_zone : "") },
    { key: "browser", label: "Browser", get: (r) => (r.device_info ? r.device_info.browser : "") },
    { key: "os", label: "OS", get: (r) => (r.device_info ? r.device_info.os : "") },
  ];
  return withUser ? cols : cols.filter((c) => c.key !== "user");
}

function field(label, input) {
  return el("label", { class: "field" }, el("span", { text: label }), input);
}

// ---- pages ---------------------------------------------------------------

const LOG_TYPES = ["", "login", "logout", "lock", "unlock", "login_failure", "password_change", "password_reset", "otp_enabled", "otp_disabled"];

function eventsPage() {
  const from = el("input", { type: "date", name: "from", value: day(daysAgo(30)) });
  const to = el("input", { type: "date", name: "to", value: day(daysAgo(-1)) });
  const tenant = el("input", { type: "text", name: "tenant", placeholder: "any allowed", size: 10 });
  const user = el("input", { type: "text", name: "username", placeholder: "any", size: 16 });
  const type = el("select", { name: "log_type" }, LOG_TYPES.map((t) => el("option", { value: t }, t || "any")));
  const limit = el("input", { type: "number", name: "limit", value: 200, min: 1, max: 1000 });
  const live = el("input", { type: "checkbox", name: "live", checked: true });
  const msg = el("p", { class: "status", id: "events-status" });
  const table = new Table("events", eventColumns(true));
  let timer = null;
  const load = async () => {
    try {
      const r = await api("admin/events", {
        from: from.value + "T00:00:00Z",
        to: to.value + "T00:00:00Z",
        tenant: tenant.value.trim(),
        username: user.value.trim(),
        log_type: type.value,
        limit: Number(limit.value) || 100,
      });
      table.set(r.result);
      status(msg, r.result.length + " events · refreshed " + new Date().toLocaleTimeString());
    } catch (e) {
      status(msg, e.message, "error");
    }
  };
  const schedule = () => {
    clearInterval(timer);
    if (live.checked) timer = setInterval(load, 5000);
  };
  live.addEventListener("change", schedule);
  const form = el(
    "form",
    { class: "filters", id: "events-filters", onsubmit: (e) => { e.preventDefault(); load(); } },
    field("From", from), field("To", to), field("Tenant", tenant), field("User", user), field("Type", type), field("Limit", limit),
    el("label", { class: "field check" }, live, " live"),
    el("button", { type: "submit" }, "Apply")
  );
  MAIN.append(form, el("div", { class: "toolbar" }, msg, table.exportButtons("events")), table.root);
  load();
  schedule();
}

function userPage() {
  const name = el("input", { type: "search", name: "username", value: param("u"), placeholder: "username", required: true, size: 24 });
  const out = el("div", { id: "user-view" });
  const show = async (u) => {
    out.replaceChildren(el("p", { class: "status", text: "Loading " + u + "…" }));
    try {
      const [logs, devices, last, alerts, summary] = await Promise.all([
        api("get_user_logs", { username: u, max_days: 0, limit: 1000 }),
        api("get_user_devices", { username: u }),
        api("get_last_login", { username: u }),
        api("get_user_alerts", { username: u, max_days: 0 }),
        api("get_user_summary", { username: u }),
      ]);
      const log = new Table("user-log", eventColumns(false));
      log.set(logs.result);
      const dev = new Table("user-devices", [
        { key: "id", label: "Device", get: (d) => d.device_info.id },
        { key: "browser", label: "Browser", get: (d) => d.device_info.browser },
        { key: "os", label: "OS", get: (d) => d.device_info.os },
        { key: "first", label: "First seen", get: (d) => when(d.first_seen) },
        { key: "last", label: "Last seen", get: (d) => when(d.last_seen) },
        { key: "logins", label: "Logins", get: (d) => d.num_logins },
      ]);
      dev.set(devices.devices);
      const ll = new Table("user-last", [
        { key: "service", label: "Service", get: (l) => l.service },
        { key: "time", label: "Last login", get: (l) => when(l.timestamp) },
      ]);
      ll.set(last.result);
      const al = new Table("user-alerts", alertColumns(false));
      al.set(alerts.alerts);
      // Asked after the reads above, so that the record holds them too.
      const reads = new Table("user-access", [
        { key: "day", label: "Day (UTC)", get: (r) => r.day },
        { key: "reader", label: "Read by", get: (r) => r.reader },
        { key: "endpoint", label: "Through", get: (r) => r.endpoint },
      ]);
      let readsNote = el("p", { class: "status", text: "Reads of this user's data by the clients transparency.record names; none recorded." });
      try {
        const access = await api("get_user_access", { username: u, max_days: 0 });
        reads.set(access.result);
        if (access.result.length) readsNote = el("p", { class: "status", text: "Reads of this user's data by the clients transparency.record names, one per day, reader and endpoint." });
      } catch (e) {
        reads.set([]);
        readsNote = el("p", { class: "status", text: "The record of reads is not available: " + e.message });
      }
      const forget = forgetBox(u, out);
      out.replaceChildren(
        el("h2", { text: u }),
        el("ul", { class: "facts", id: "user-summary" }, summary.facts.map((f) => el("li", { text: f.text }))),
        el("h3", { text: "Log (" + logs.result.length + ")" }), el("div", { class: "toolbar" }, log.exportButtons("log-" + u)), log.root,
        el("h3", { text: "Devices" }), dev.root,
        el("h3", { text: "Last logins" }), ll.root,
        el("h3", { text: "Alerts" }), al.root,
        el("h3", { text: "Who read this user's data" }), readsNote, reads.root,
        forget
      );
    } catch (e) {
      out.replaceChildren(el("p", { class: "status error", text: e.message }));
    }
  };
  const form = el(
    "form",
    { class: "filters", id: "user-search", onsubmit: (e) => { e.preventDefault(); const u = name.value.trim(); if (u) { history.replaceState(null, "", "/user?u=" + encodeURIComponent(u)); show(u); } } },
    field("User", name),
    el("button", { type: "submit" }, "Show")
  );
  MAIN.append(form, out);
  if (name.value) show(name.value);
}

function forgetBox(u, out) {
  const confirmName = el("input", { type: "text", id: "forget-confirm", placeholder: "type " + u + " to confirm", size: 28 });
  const go = el("button", { type: "button", class: "danger", id: "forget-go", disabled: true }, "Forget " + u);
  const msg = el("p", { class: "status" });
  confirmName.addEventListener("input", () => { go.disabled = confirmName.value !== u; });
  go.addEventListener("click", async () => {
    try {
      const r = await api("forget_user", { username: u });
      const d = r.deleted;
      out.replaceChildren(el("p", { class: "status ok", id: "forgotten", text: `${u} forgotten: ${d.user_logs} log entries, ${d.devices} devices, ${d.last_logins} last logins, ${d.alerts} alerts deleted.` }));
    } catch (e) {
      status(msg, e.message, "error");
    }
  });
  return el("section", { class: "forget" }, el("h3", { text: "Forget this user" }),
    el("p", { text: "Deletes every row of the user for good (erasure). There is no undo." }),
    confirmName, " ", go, msg);
}

function deliveriesText(a) {
  return a.deliveries.map((d) => `${d.sink}: ${d.state}` + (d.attempts ? ` (${d.attempts})` : "") + (d.last_error ? ` – ${d.last_error}` : "")).join("; ");
}

function alertColumns(withUser) {
  const cols = [
    { key: "time", label: "Time (UTC)", get: (a) => when(a.timestamp) },
    { key: "user", label: "User", get: (a) => a.username, link: userLink },
    { key: "kind", label: "Kind", get: (a) => a.kind },
    { key: "text", label: "Alert", get: (a) => a.text },
    { key: "deliveries", label: "Deliveries", get: deliveriesText },
  ];
  return withUser ? cols : cols.filter((c) => c.key !== "user");
}

function alertsPage() {
  const state = el("select", { name: "state" }, ["", "pending", "failed", "delivered"].map((s) => el("option", { value: s }, s || "any")));
  const days = el("input", { type: "number", name: "max_days", value: 30, min: 0 });
  const msg = el("p", { class: "status", id: "alerts-status" });
  let load = null;
  const retry = (a) => {
    if (!a.deliveries.some((d) => d.state !== "delivered")) return null;
    return el("button", { type: "button", class: "retry", "data-alert": a.id, onclick: async () => {
      try {
        const res = await api("admin/retry_alert", { id: a.id });
        status(msg, `alert ${a.id}: ${res.rescheduled} deliveries due again`, "ok");
        setTimeout(load, 1000);
      } catch (e) {
        status(msg, e.message, "error");
      }
    } }, "Retry now");
  };
  const table = new Table("alerts", [...alertColumns(true), { key: "action", label: "", get: () => "", node: retry }]);
  load = async () => {
    try {
      const r = await api("admin/alerts", { max_days: Number(days.value) || 0, state: state.value, limit: 500 });
      table.set(r.alerts);
      if (!msg.classList.contains("ok")) status(msg, r.alerts.length + " alerts");
    } catch (e) {
      status(msg, e.message, "error");
    }
  };
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); msg.className = "status"; load(); } },
    field("Delivery state", state), field("Days (0: all)", days), el("button", { type: "submit" }, "Apply"));
  MAIN.append(form, el("div", { class: "toolbar" }, msg), table.root);
  load();
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  e.append(...children);
  return e;
}

function barChart(rows, label) {
  const h = 120, pad = 40;
  const max = Math.max(1, ...rows.map((r) => r.count));
  const bw = Math.min(56, 560 / Math.max(rows.length, 1));
  const w = Math.max(260, pad + rows.length * bw + 10);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${w} ${h + 24}`, width: w, height: h + 24, role: "img", "aria-label": label });
  chart.append(svg("line", { class: "axis", x1: pad, y1: h, x2: w - 10, y2: h }));
  chart.append(svg("text", { x: 2, y: 12 }, String(max)));
  rows.forEach((r, i) => {
    const bh = Math.max(1, (r.count / max) * (h - 20));
    const x = pad + i * bw + 2;
    const bar = svg("rect", { class: "bar", x, y: h - bh, width: Math.max(1, bw - 4), height: bh });
    bar.append(svg("title", {}, `${r.key}: ${r.count} (${r.users} users)`));
    chart.append(bar);
    if (rows.length <= 16 || i % Math.ceil(rows.length / 16) === 0) {
      chart.append(svg("text", { x, y: h + 14 }, String(r.key).slice(0, 10)));
    }
  });
  return chart;
}

function reportsPage() {
  const from = el("input", { type: "date", name: "from", value: day(daysAgo(30)) });
  const to = el("input", { type: "date", name: "to", value: day(daysAgo(-1)) });
  const tenant = el("input", { type: "text", name: "tenant", placeholder: "any", size: 10 });
  const perComputer = el("input", { type: "checkbox", name: "per_computer" });
  const out = el("div", { id: "reports" });
  const load = async () => {
    out.replaceChildren(el("p", { class: "status", text: "Loading…" }));
    try {
      const r = await api("report", { from: from.value + "T00:00:00Z", to: to.value + "T00:00:00Z", tenant: tenant.value.trim(), per_computer: perComputer.checked });
      const parts = [el("p", { class: "meta wide", text: `${r.from.slice(0, 10)} – ${r.to.slice(0, 10)} (UTC); rows about fewer than ${r.min_users} users are withheld.` })];
      for (const rep of r.reports) {
        const sec = el("section", { class: "report", "data-kind": rep.kind }, el("h2", { text: rep.title }));
        if (rep.rows.length) {
          sec.append(barChart(rep.kind === "time_spent" ? rep.rows.map((x) => ({ ...x, count: Math.round(x.count / 60) })) : rep.rows, rep.title));
          const t = new Table("report-" + rep.kind, [
            { key: "key", label: rep.key, get: (x) => x.key },
            { key: "count", label: rep.kind === "time_spent" ? "time" : rep.count, get: (x) => (rep.kind === "time_spent" ? duration(x.count) : x.count) },
            { key: "users", label: "users", get: (x) => x.users },
          ]);
          t.set(rep.rows);
          sec.append(t.table);
        } else {
          sec.append(el("p", { class: "empty", text: "No rows." }));
        }
        if (rep.stats && rep.stats.length) sec.append(el("p", { class: "meta", text: rep.stats.map((s) => s.name.endsWith("_seconds") ? `${s.name.replace(/_seconds$/, "")}: ${duration(s.value)}` : `${s.name}: ${s.value}`).join(", ") }));
        if (rep.suppressed_rows) sec.append(el("p", { class: "suppressed", text: rep.suppressed_rows + " rows withheld (too few users)." }));
        if (rep.time_spent && rep.time_spent.length) {
          const t = new Table("time-spent", [
            { key: "day", label: "Day", get: (x) => x.day },
            { key: "user", label: "User", get: (x) => x.username, link: userLink },
            { key: "computer", label: "Computer", get: (x) => x.computer || "" },
            { key: "time", label: "Time", get: (x) => duration(x.seconds) },
            { key: "first", label: "First start", get: (x) => when(x.first_start).slice(11) },
            { key: "last", label: "Last end", get: (x) => when(x.last_end).slice(11) },
          ]);
          t.set(rep.time_spent);
          sec.append(el("div", { class: "toolbar" }, t.exportButtons("time-spent")), t.root);
        }
        if (rep.note) sec.append(el("p", { class: "note", text: rep.note }));
        parts.push(sec);
      }
      out.replaceChildren(...parts);
    } catch (e) {
      out.replaceChildren(el("p", { class: "status error", text: e.message }));
    }
  };
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); load(); } },
    field("From", from), field("To", to), field("Tenant (time spent)", tenant),
    el("label", { class: "field check" }, perComputer, " per computer"),
    el("button", { type: "submit" }, "Show"));
  MAIN.append(form, out);
  load();
}

function stalePage() {
  const names = el("textarea", { name: "usernames", id: "stale-names", rows: 10, cols: 40, placeholder: "one username per line" });
  const file = el("input", { type: "file", accept: ".txt,.csv,text/plain,text/csv" });
  const days = el("input", { type: "number", name: "days", value: 90, min: 1 });
  const msg = el("p", { class: "status", id: "stale-status" });
  const table = new Table("stale", [{ key: "user", label: "Unused account", get: (u) => u }]);
  file.addEventListener("change", async () => {
    if (file.files.length) names.value = (await file.files[0].text()).split(/[\r\n,;]+/).map((s) => s.trim()).filter(Boolean).join("\n");
  });
  const form = el("form", { class: "filters stale", onsubmit: async (e) => {
    e.preventDefault();
    const list = names.value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
    if (!list.length) { status(msg, "Paste or upload some usernames first.", "error"); return; }
    try {
      const r = await api("get_unused_accounts", { usernames: list, days: Number(days.value) || 90 });
      table.set(r.unused_usernames);
      status(msg, `${r.unused_usernames.length} of ${list.length} accounts unused for ${days.value} days`);
    } catch (err) {
      status(msg, err.message, "error");
    }
  } },
    field("Usernames", names), field("Or a file", file), field("Unused for (days)", days),
    el("button", { type: "submit" }, "Find unused"));
  MAIN.append(form, el("div", { class: "toolbar" }, msg, table.exportButtons("unused-accounts")), table.root);
}

const PAGES = { events: eventsPage, user: userPage, alerts: alertsPage, reports: reportsPage, stale: stalePage };
(PAGES[PAGE] || eventsPage)();
