// The search page: reads /v1/indexes for the collections and their modes, sends /v1/search,
// shows the hits (title, id, score, a text snippet, and an image when a hit stores an `image`
// URL) and the server's timings. Plain DOM, no build step; text is set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const SNIPPET = 240;
let collections = {};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value || sessionStorage.getItem("embedx-key");
  if (key) h["X-API-Key"] = key;
  return h;
}

async function call(method, path, body) {
  const resp = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (resp.status === 401) $("keybox").hidden = false;
  if (!resp.ok) {
    const err = (data && data.error) || { type: String(resp.status), message: resp.statusText };
    throw new Error(`${err.type}: ${err.message}`);
  }
  if ($("apikey").value) sessionStorage.setItem("embedx-key", $("apikey").value);
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("timings").textContent = "";
}

function fillModes() {
  const c = collections[$("collection").value];
  const mode = $("mode");
  mode.replaceChildren();
  if (!c) return;
  const side = c.sparse || c.dense;
  $("server").textContent = `${$("collection").value} · ${side.count} documents · ${c.modes.join(", ")}`;
  for (const m of c.modes) {
    const opt = new Option(m, m, m === c.default_mode, m === c.default_mode);
    mode.append(opt);
  }
}

async function loadCollections() {
  try {
    const data = await call("GET", "/v1/indexes");
    collections = data.collections;
  } catch (e) {
    showError(e.message);
    return;
  }
  const sel = $("collection");
  sel.replaceChildren(...Object.keys(collections).map((n) => new Option(n, n)));
  sel.hidden = sel.options.length < 2;
  fillModes();
  $("error").textContent = "";
}

function safeImage(url) {
  if (typeof url !== "string") return null;
  try {
    const u = new URL(url, window.location.href);
    return ["http:", "https:", "data:"].includes(u.protocol) ? u.href : null;
  } catch (e) {
    return null;
  }
}

function renderHit(hit, rank) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.id = hit.id;
  const f = hit.fields || {};
  const img = safeImage(f.image);
  if (img) {
    const el = document.createElement("img");
    el.src = img;
    el.alt = f.title || hit.id;
    el.loading = "lazy";
    li.append(el);
  }
  const body = document.createElement("div");
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = `${rank}. ${f.title || hit.id}`;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${hit.id} · score ${Number(hit.score).toFixed(4)}`;
  body.append(title, meta);
  if (typeof f.text === "string" && f.text) {
    const snip = document.createElement("div");
    snip.className = "snippet";
    snip.textContent = f.text.length > SNIPPET ? f.text.slice(0, SNIPPET) + "…" : f.text;
    body.append(snip);
  }
  li.append(body);
  return li;
}

async function search(event) {
  event.preventDefault();
  const query = $("q").value;
  if (!query.trim()) return;
  const request = { query, k: Number($("k").value) || 10 };
  if ($("collection").value) request.collection = $("collection").value;
  if ($("mode").value) request.mode = $("mode").value;
  $("go").disabled = true;
  try {
    const data = await call("POST", "/v1/search", request);
    $("error").textContent = "";
    $("results").replaceChildren(...data.hits.map((h, i) => renderHit(h, i + 1)));
    const t = data.timings;
    $("timings").textContent = `${data.hits.length} hits · ${data.mode} · generation ${data.generation} · ` +
      `encode ${t.encode_ms} ms · search ${t.search_ms} ms · fuse ${t.fuse_ms} ms · ` +
      `fields ${t.fields_ms} ms · total ${t.total_ms} ms`;
    if (!data.hits.length) $("timings").textContent = "no results · " + $("timings").textContent;
  } catch (e) {
    showError(e.message);
    $("results").replaceChildren();
  } finally {
    $("go").disabled = false;
  }
}

$("search-form").addEventListener("submit", search);
$("collection").addEventListener("change", fillModes);
$("apikey").addEventListener("change", loadCollections);
loadCollections();
