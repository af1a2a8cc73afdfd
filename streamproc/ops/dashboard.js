// The instance dashboard: /topology once, /status every second. Plain DOM, no build step.
// Every value from the server goes in through textContent (topic names are user data).
"use strict";

const REFRESH_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US")),
  bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  },
  secs(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return `${(s * 1000).toFixed(1)} ms`;
    if (s < 120) return `${s.toFixed(1)} s`;
    if (s < 7200) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  },
  time: (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z",
};

// -- topology graph: one row per sub-topology, columns by depth --------------------------
const NODE_H = 44, ROW_GAP = 30, COL_GAP = 42, V_GAP = 14, PAD = 10, CHAR_W = 7.2;

function storeOf(n) { return n.store || null; }

function nodeStyle(item) {
  if (item.kind === "topic") return item.internal ? ["#f3eefc", "#7a4fd6"] : ["#eef2f7", "#8594a6"];
  if (item.kind === "source") return ["#e8f0fe", "#2f6fdf"];
  if (item.kind === "to") return ["#e6f6ec", "#1f9d55"];
  if (item.kind === "repartition") return ["#f3eefc", "#7a4fd6"];
  if (item.store) return ["#fff4e0", "#c97a00"];
  return ["#ffffff", "#b8c2cf"];
}

function layoutTopology(topo) {
  const rows = [];
  const internal = new Set(topo.internal_topics || []);
  const topicItem = {};  // topic name -> item (drawn once, in the row that writes it)
  const byName = {};
  const edges = [];
  for (const st of topo.subtopologies) {
    const items = [];
    const depth = {};
    const local = Object.fromEntries(st.nodes.map((n) => [n.name, n]));
    const depthOf = (n) => {
      if (depth[n.name] !== undefined) return depth[n.name];
      const ps = n.parents.filter((p) => local[p]);
      depth[n.name] = ps.length ? 1 + Math.max(...ps.map((p) => depthOf(local[p]))) : 1;
      return depth[n.name];
    };
    for (const n of st.nodes) {
      const store = storeOf(n);
      const item = { id: n.name, label: n.name, kind: n.kind, store, col: depthOf(n),
        sub: kindLine(n.kind, store) };
      items.push(item);
      byName[n.name] = item;
    }
    for (const n of st.nodes) {
      for (const c of n.children) edges.push([n.name, c, false]);
      if (n.kind === "source") {
        for (const t of n.topics) {
          if (internal.has(t)) continue;  // drawn where it is written
          const it = { id: `topic:${t}`, label: t, kind: "topic", internal: false, col: 0,
            sub: "topic" };
          items.push(it);
          byName[it.id] = it;
          edges.push([it.id, n.name, false]);
        }
      }
      const written = [];
      if (n.kind === "to" || n.kind === "repartition") written.push(n.topic);
      if (n.late_topic && n.late === "side_output") written.push(n.late_topic);
      for (const t of written) {
        let it = topicItem[t];
        if (!it) {
          it = { id: `topic:${t}`, label: t, kind: "topic", internal: internal.has(t),
            col: depthOf(n) + 1, sub: internal.has(t) ? "internal topic" : "topic" };
          topicItem[t] = it;
          items.push(it);
          byName[it.id] = it;
        }
        edges.push([n.name, it.id, false]);
      }
    }
    rows.push({ id: st.id, items });
  }
  // Internal topics feed the internal sources of later rows.
  for (const st of topo.subtopologies) {
    for (const n of st.nodes) {
      if (n.kind !== "source") continue;
      for (const t of n.topics) if (topicItem[t]) edges.push([topicItem[t].id, n.name, true]);
    }
  }
  return { rows, edges, byName };
}

function kindLine(kind, store) {
  const k = kind.replace(/_/g, " ");
  return store ? `${k} · store ${store}` : k;
}

function drawTopology(topo) {
  const { rows, edges, byName } = layoutTopology(topo);
  const colW = [];
  for (const row of rows) {
    for (const it of row.items) {
      it.w = Math.max(110, Math.ceil(Math.max(it.label.length, it.sub.length) * CHAR_W) + 24);
      colW[it.col] = Math.max(colW[it.col] || 0, it.w);
    }
  }
  const colX = [];
  let x = PAD;
  for (let c = 0; c < colW.length; c++) { colX[c] = x; x += (colW[c] || 0) + (colW[c] ? COL_GAP : 0); }
  const width = x - COL_GAP + PAD;
  let y = PAD;
  const svg = el("svg:svg", { role: "img", "aria-label": `topology ${topo.application_id}` });
  const defs = el("svg:defs", {},
    el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
    el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8594a6" })));
  svg.append(defs);
  const nodesG = el("svg:g", {});
  const parentsOf = {};
  for (const [from, to, cross] of edges) if (!cross) (parentsOf[to] = parentsOf[to] || []).push(from);
  for (const row of rows) {
    const perCol = {};
    for (const it of row.items) (perCol[it.col] = perCol[it.col] || []).push(it);
    const tallest = Math.max(...Object.values(perCol).map((l) => l.length));
    const rowH = tallest * NODE_H + (tallest - 1) * V_GAP;
    nodesG.append(el("svg:text", { class: "sub-label", x: PAD, y: y + 10 },
      `sub-topology ${row.id}`));
    const top = y + 20;
    const cols = Object.keys(perCol).map(Number).sort((p, q) => p - q);
    for (const c of cols) {
      // Order a column by where its inputs are (barycentres): fewer crossing edges.
      const list = perCol[c];
      const centre = (it) => {
        const ys = (parentsOf[it.id] || []).map((p) => byName[p])
          .filter((p) => p && p.rowTop === y).map((p) => p.y);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
      };
      const keyed = list.map((it, i) => [centre(it), i, it]);
      keyed.sort((p, q) => (p[0] - q[0]) || (p[1] - q[1]));
      list.splice(0, list.length, ...keyed.map((k) => k[2]));
      const colH = list.length * NODE_H + (list.length - 1) * V_GAP;
      list.forEach((it, i) => {
        it.x = colX[c] + (colW[c] - it.w) / 2;
        it.y = top + (rowH - colH) / 2 + i * (NODE_H + V_GAP);
        it.rowTop = y;
        const [fill, stroke] = nodeStyle(it);
        const g = el("svg:g", { class: `node kind-${it.kind}`, "data-name": it.label },
          el("svg:title", {}, it.label),
          el("svg:rect", { x: it.x, y: it.y, width: it.w, height: NODE_H, fill, stroke,
            rx: it.kind === "topic" ? 18 : 6 }),
          el("svg:text", { class: "kind", x: it.x + it.w / 2, y: it.y + 16,
            "text-anchor": "middle" }, it.sub),
          el("svg:text", { x: it.x + it.w / 2, y: it.y + 33, "text-anchor": "middle",
            "font-weight": "600" }, it.label));
        nodesG.append(g);
      });
    }
    y = top + rowH + ROW_GAP;
  }
  const edgesG = el("svg:g", {});
  for (const [from, to, cross] of edges) {
    const a = byName[from], b = byName[to];
    if (!a || !b) continue;
    const x1 = a.x + a.w, y1 = a.y + NODE_H / 2, x2 = b.x, y2 = b.y + NODE_H / 2;
    let d;
    if (cross) {
      // From the bottom of the internal topic down into the gap above the next row, back
      // left, and into the internal source that reads it: right angles, rounded corners.
      const ax = a.x + a.w / 2, midY = b.rowTop - 10, bx = x2 - 18, r = 6;
      d = `M ${ax} ${a.y + NODE_H} V ${midY - r} Q ${ax} ${midY} ${ax - r} ${midY} ` +
        `H ${bx + r} Q ${bx} ${midY} ${bx} ${midY + r} V ${y2 - r} ` +
        `Q ${bx} ${y2} ${bx + r} ${y2} H ${x2}`;
    } else {
      const dx = Math.max(16, (x2 - x1) / 2);
      d = `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`;
    }
    edgesG.append(el("svg:path", { class: cross ? "edge internal" : "edge", d,
      "marker-end": "url(#arrow)" }));
  }
  svg.append(edgesG, nodesG);
  const height = y - ROW_GAP + PAD;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.maxWidth = `${width}px`;
  $("graph").replaceChildren(svg);

  const list = $("topics");
  list.replaceChildren();
  const entries = [
    ["source topics", topo.source_topics], ["sink topics", topo.sink_topics],
    ["stores", topo.stores], ["internal topics", topo.internal_topics],
    ["dead-letter topic", [topo.dead_letter_topic]],
  ];
  for (const [k, v] of entries) {
    list.append(el("dt", {}, k), el("dd", { "data-list": k }, v && v.length ? v.join(", ") : "none"));
  }
  $("guarantee").textContent = "";
}

// -- status ---------------------------------------------------------------------------------
function setBadge(id, text, level) {
  const b = $(id);
  b.textContent = text;
  b.className = `badge ${level}`;
}

function fillTable(id, rows, columns, empty) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { class: "empty", colspan: columns }, empty)));
    return;
  }
  for (const cells of rows) {
    body.append(el("tr", {}, ...cells.map(([v, cls]) => el("td", { class: cls || null }, v))));
  }
}

function kv(id, pairs) {
  const dl = $(id);
  dl.replaceChildren();
  for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v));
}

function render(s) {
  $("app-id").textContent = s.app_id;
  $("instance").textContent = s.instance_id ? `instance ${s.instance_id}` : "";
  $("guarantee").textContent = `· ${s.guarantee.replace(/_/g, "-")}`;
  document.title = `streamproc · ${s.app_id}`;
  setBadge("badge-state", s.state,
    s.state === "running" ? "ok" : s.state === "failed" ? "bad" : "warn");
  setBadge("badge-ready", s.ready ? "ready" : "not ready", s.ready ? "ok" : "warn");
  setBadge("badge-health", s.healthy ? "healthy" : "stuck", s.healthy ? "ok" : "bad");

  const totalLag = s.partitions.reduce((acc, p) => acc + (p.lag || 0), 0);
  $("t-processed").textContent = fmt.int(s.processed);
  $("t-rate").textContent = fmt.int(Math.round(s.rate));
  $("t-produced").textContent = fmt.int(s.produced);
  $("t-lag").textContent = fmt.int(totalLag);
  $("t-checkpoints").textContent = fmt.int(s.checkpoint.count);
  $("t-rebalances").textContent = fmt.int(s.rebalances);
  $("t-aborts").textContent = fmt.int(s.transaction_aborts);
  $("t-uptime").textContent = fmt.secs((s.published_at_ms - s.started_at_ms) / 1000);

  const tasks = Object.fromEntries(s.tasks.map((t) => [t.id, t]));
  fillTable("partitions", s.partitions.map((p) => {
    const t = tasks[p.task] || {};
    return [
      [p.topic, "mono"], [p.partition], [p.task, "mono"],
      [el("span", { class: `pill ${p.state}` }, p.state)],
      [fmt.int(p.committed), "num"], [fmt.int(p.position), "num"],
      [fmt.int(p.high_watermark), "num"], [fmt.int(p.lag), p.lag > 1000 ? "num lag-high" : "num"],
      [t.watermark_ms != null ? fmt.time(t.watermark_ms) : "–", "mono"],
      [t.watermark_lag_ms != null ? fmt.secs(t.watermark_lag_ms / 1000) : "–", "num"],
    ];
  }), 10, "no partitions assigned (yet)");

  const c = s.checkpoint;
  kv("checkpoint", [
    ["committed", fmt.int(c.count)], ["failed", fmt.int(c.failures)],
    ["last duration", fmt.secs(c.last_seconds)],
    ["last changelog records", fmt.int(c.last_changelog_records)],
    ["last size", fmt.bytes(c.last_bytes)],
    ["last commit", c.last_at_ms ? `${fmt.secs((s.published_at_ms - c.last_at_ms) / 1000)} ago` : "–"],
  ]);
  kv("restore-totals", [
    ["restored records", fmt.int(s.restored_records)],
    ["restored bytes", fmt.bytes(s.restored_bytes)],
    ["stores restoring", fmt.int(s.restoring.length)],
  ]);
  const restoring = $("restoring");
  restoring.replaceChildren();
  for (const r of s.restoring) {
    const total = r.remaining == null ? null : r.records + r.remaining;
    const pct = total ? Math.min(100, (100 * r.records) / total) : 0;
    restoring.append(
      el("div", { class: "restore-line" },
        el("span", { class: "mono" }, `${r.store} [${r.partition}] · task ${r.task}`),
        el("span", {}, `${fmt.int(r.records)} / ${total == null ? "?" : fmt.int(total)}`)),
      el("div", { class: "progress" }, el("div", { style: `width: ${pct.toFixed(1)}%` })));
  }

  const types = [...new Set([...Object.keys(s.dead_letters), ...Object.keys(s.dead_letters_recent)])].sort();
  fillTable("dlq", types.map((t) => [[t, "mono"], [fmt.int(s.dead_letters_recent[t] || 0), "num"],
    [fmt.int(s.dead_letters[t] || 0), "num"]]), 3, "no dead letters");
  kv("late", [["late, dropped", fmt.int(s.late_records.drop || 0)],
    ["late, side output", fmt.int(s.late_records.side_output || 0)]]);

  fillTable("stores", s.stores.map((st) => [[st.store, "mono"], [st.partition],
    [fmt.int(st.keys), "num"], [fmt.bytes(st.sst_bytes), "num"],
    [fmt.bytes(st.memtable_bytes), "num"]]), 5, "no local stores");

  $("updated").textContent = `updated ${fmt.time(s.published_at_ms)} · refreshes every second`;
}

let topologyShown = false;
let lastOk = null;

// With http_auth_token set, /status and /topology need "Authorization: Bearer <token>". A
// browser sends no such header by itself, so the page asks once and keeps the token for this
// tab only (sessionStorage: gone when the tab closes, never sent to another origin).
const TOKEN_KEY = "streamproc.token";
let tokenRefused = false;

async function get(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(path, { cache: "no-store", headers });
  if (r.status !== 401 || tokenRefused) return r;
  const given = window.prompt("This instance needs its HTTP token (http_auth_token):");
  if (!given) { tokenRefused = true; return r; }  // asked once: reload the page to retry
  sessionStorage.setItem(TOKEN_KEY, given.trim());
  return get(path);
}

async function refresh() {
  try {
    if (!topologyShown) {
      const t = await get("topology");
      if (t.ok) { drawTopology(await t.json()); topologyShown = true; }
    }
    const r = await get("status");
    if (r.status === 401) throw new Error("401: a token is needed (reload to enter it)");
    if (!r.ok) throw new Error(`status ${r.status}`);
    render(await r.json());
    lastOk = Date.now();
    $("banner").hidden = true;
  } catch (err) {
    const banner = $("banner");
    banner.hidden = false;
    banner.textContent = lastOk
      ? `no answer from the instance since ${fmt.time(lastOk)} (${err.message})`
      : `cannot reach the instance (${err.message})`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
