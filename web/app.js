// ferry's web UI: files, sharing, receiving, open links (live over SSE), a link's own page,
// history, status. Plain DOM, no framework; every piece of server data goes in through textContent.

import { api, ApiError, size, when, until, folderName, linkName } from "/api.js";
import { $, el, copyFrom, revealToggle, hidePassword } from "/dom.js";
import { setupLinkPage, showLinkPage, linkEvent } from "/link.js";

const views = ["files", "open", "history", "status"];
// `selected` holds the entries ticked in Files (by path, across folders and searches), to share
// together as one ZIP. `expanded` holds the open links whose list of members is unfolded. The
// defaults and limits of new links come from the server's configuration.
const state = {
  dir: "", links: new Map(), events: null, sharing: null, receiving: null, expiry: 3600, maxExpiry: 3600,
  defaultExpiry: 3600, defaultDownloads: 1, maxDownloads: 100,
  selected: new Map(), expanded: new Set(), polling: false,
};

function showError(err) {
  const box = $("error");
  if (!err) { box.hidden = true; return; }
  if (err instanceof ApiError && err.status === 401) { showLogin(); return; }
  box.textContent = err.message || String(err);
  box.hidden = false;
}

async function guarded(fn) {
  try { showError(null); await fn(); } catch (e) { showError(e); }
}

// ---- navigation -----------------------------------------------------------

// `#files`, `#open`, `#history`, `#status`, or one link's page: `#/links/<id>`.
function route() {
  const link = /^#\/links\/([^/]+)$/.exec(location.hash);
  const view = link ? "link" : views.includes(location.hash.slice(1)) ? location.hash.slice(1) : "files";
  for (const v of [...views, "link"]) $(v).hidden = v !== view;
  $("login").hidden = true;
  const current = view === "link" ? "open" : view;
  for (const a of document.querySelectorAll("header nav a")) {
    if (a.dataset.view === current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (link) {
    guarded(async () => { listen(); await showLinkPage(decodeURIComponent(link[1])); });
    return;
  }
  guarded(() => ({ files: loadFiles, open: loadOpen, history: loadHistory, status: loadStatus })[view]());
}

function showLogin() {
  for (const v of [...views, "link"]) $(v).hidden = true;
  $("login").hidden = false;
  $("token").focus();
}

// ---- files ------------------------------------------------------------------

// A folder comes a page at a time: `offset` 0 starts the list again, a later one adds to it.
async function loadFiles(offset = 0) {
  const q = $("search").value.trim();
  const params = new URLSearchParams({ path: state.dir });
  if (q) params.set("q", q);
  else if (offset) params.set("offset", String(offset));
  const data = await api("GET", `/api/files?${params}`);
  renderCrumbs();
  showReceiveHere();
  const rows = $("file-rows");
  if (!offset) rows.replaceChildren();
  for (const e of data.entries) rows.append(fileRow(e, q));
  $("files-empty").hidden = rows.children.length > 0;
  renderSelection();
  const more = $("files-more");
  more.hidden = data.next_offset == null;
  more.textContent = data.next_offset == null ? "" : `Show more (${data.next_offset} of ${data.total} shown)`;
  more.onclick = () => guarded(() => loadFiles(data.next_offset));
  $("files-truncated").hidden = !data.truncated;
}

// One entry of the list: a box to tick it for a ZIP, its name (a folder's opens it), and a
// button to share it alone (a folder alone becomes one ZIP); a folder also offers to receive
// files into it.
function fileRow(e, q) {
  const label = q ? e.path : e.name;
  const name = e.is_dir
    ? el("button", { type: "button", text: `${label}/`, onclick: () => { state.dir = e.path; $("search").value = ""; guarded(loadFiles); } })
    : el("span", { text: label });
  const pick = el("input", { type: "checkbox", "aria-label": `Select ${e.name}` });
  pick.entry = e;
  pick.checked = state.selected.has(e.path);
  pick.addEventListener("change", () => {
    if (pick.checked) state.selected.set(e.path, e);
    else state.selected.delete(e.path);
    renderSelection();
  });
  const target = e.is_dir
    ? { label: `${e.name}/ as one ZIP`, body: { file_path: e.path }, zip: true }
    : { label: e.name, body: { file_path: e.path }, zip: false };
  const share = el("button", { type: "button", class: "quiet", text: "Share", "aria-label": `Share ${e.name}`, onclick: () => openShare(target) });
  const acts = el("div", { class: "row-actions" }, share);
  if (e.is_dir) {
    acts.append(el("button", { type: "button", class: "quiet receive", text: "Receive", "aria-label": `Receive files into ${e.name}/`, onclick: () => openReceive(e.path) }));
  }
  return el("tr", { "data-path": e.path },
    el("td", { class: "pick" }, pick),
    el("td", { class: "name" }, name),
    el("td", { class: "num", text: e.is_dir ? "" : size(e.size) }),
    el("td", { class: "hide-narrow", text: when(e.modified) }),
    el("td", {}, acts));
}

// The bar under the list says how many entries are ticked; the header's box ticks every row shown.
function renderSelection() {
  const n = state.selected.size;
  $("selection").hidden = n === 0;
  $("selection-count").textContent = n === 1 ? "1 selected" : `${n} selected`;
  const boxes = [...document.querySelectorAll("#file-rows td.pick input")];
  for (const b of boxes) b.checked = state.selected.has(b.entry.path);
  const ticked = boxes.filter((b) => b.checked).length;
  $("select-all").checked = boxes.length > 0 && ticked === boxes.length;
  $("select-all").indeterminate = ticked > 0 && ticked < boxes.length;
}

function selectAll() {
  const on = $("select-all").checked;
  for (const b of document.querySelectorAll("#file-rows td.pick input")) {
    if (on) state.selected.set(b.entry.path, b.entry);
    else state.selected.delete(b.entry.path);
  }
  renderSelection();
}

function shareSelection() {
  const paths = [...state.selected.keys()];
  const label = paths.length === 1 ? `${state.selected.get(paths[0]).name} as one ZIP` : `${paths.length} items as one ZIP`;
  openShare({ label, body: { file_paths: paths }, zip: true, fromSelection: true });
}

function renderCrumbs() {
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  const parts = state.dir ? state.dir.split("/") : [];
  const go = (dir) => () => { state.dir = dir; $("search").value = ""; guarded(loadFiles); };
  crumbs.append(el("button", { type: "button", text: "data", onclick: go("") }));
  parts.forEach((p, i) => {
    crumbs.append(" / ", el("button", { type: "button", text: p, onclick: go(parts.slice(0, i + 1).join("/")) }));
  });
}

// ---- sharing ------------------------------------------------------------------

// Expiry presets, in seconds; a dialog offers those up to the server's maximum.
const PRESETS = [900, 3600, 86400, 604800];

// "15 min", "1 hour", "7 days", "90 min", "100 s".
function span(secs) {
  const unit = (n, one, many) => `${n} ${n === 1 ? one : many}`;
  if (secs % 86400 === 0) return unit(secs / 86400, "day", "days");
  if (secs % 3600 === 0) return unit(secs / 3600, "hour", "hours");
  if (secs % 60 === 0) return `${secs / 60} min`;
  return `${secs} s`;
}

// `target` is what to share: `label` for the dialog's title, `body` the paths as the API takes
// them (`file_path`, or `file_paths` for a ZIP of several), `zip` whether it becomes an archive.
function openShare(target) {
  state.sharing = target;
  $("share-name").textContent = target.label;
  $("share-form").hidden = false;
  $("share-result").hidden = true;
  $("max-downloads").value = String(state.defaultDownloads);
  $("max-downloads").max = String(state.maxDownloads);
  $("note").value = "";
  $("rate").value = "";
  hidePassword($("share-password"), $("share-password-show"));
  fillPresets($("expiry-presets"));
  $("share-dialog").showModal();
}

// The expiry buttons of a dialog: the presets up to the server's maximum, the maximum itself and
// the server's default, which is chosen to begin with.
function fillPresets(presets) {
  presets.replaceChildren();
  const max = state.maxExpiry;
  state.expiry = Math.min(state.defaultExpiry, max);
  const options = [...new Set([...PRESETS.filter((s) => s <= max), max, state.expiry])].sort((a, b) => a - b);
  for (const secs of options) {
    const label = secs === max ? `${span(secs)} (longest)` : span(secs);
    const b = el("button", { type: "button", text: label, "aria-pressed": String(secs === state.expiry), "data-seconds": String(secs) });
    b.addEventListener("click", () => {
      state.expiry = secs;
      for (const o of presets.children) o.setAttribute("aria-pressed", String(o === b));
    });
    presets.append(b);
  }
}

async function createLink(ev) {
  ev.preventDefault();
  const body = { ...state.sharing.body, expires_in_seconds: state.expiry, max_downloads: Number($("max-downloads").value) };
  const note = $("note").value.trim();
  if (note) body.note = note;
  const rate = $("rate").value.trim();
  if (rate) body.rate_limit_bytes_per_second = Math.round(Number(rate) * 1000);
  const password = $("share-password").value;
  if (password) body.password = password;
  try {
    showError(null);
    const created = await api("POST", "/api/links", body);
    $("share-form").hidden = true;
    $("share-result").hidden = false;
    $("share-url").value = created.download_url;
    $("share-qr").src = `/admin/tunnels/${encodeURIComponent(created.tunnel_id)}/qr.svg`;
    $("share-page").href = `#/links/${encodeURIComponent(created.tunnel_id)}`;
    showArchive(created, Boolean(password));
    if (state.sharing.fromSelection) {
      state.selected.clear();
      renderSelection();
    }
    $("share-copy").focus();
  } catch (e) {
    $("share-dialog").close();
    showError(e);
    if (e instanceof ApiError && e.status === 404) guarded(loadFiles).then(() => showError(e));
  }
}

// The most skipped entries the result lists; the server may leave out many more.
const SKIPPED_SHOWN = 50;

// What the link allows, and for a ZIP link how big the archive is and what was left out of it, and
// why.
function showArchive(created, password) {
  const zip = created.kind === "zip";
  const n = Number($("max-downloads").value);
  const uses = n === 1 ? "It works once, then vanishes." : `It works ${n} times, then vanishes.`;
  const who = password ? "Anyone with it and the password" : "Anyone with it";
  $("share-what").textContent = `${uses} ${who} can download the ${zip ? "archive" : "file"}.`;
  $("share-zip").hidden = !zip;
  if (!zip) return;
  $("share-size").textContent = `ZIP archive · ${size(created.file_size)}`;
  const skipped = created.skipped || [];
  $("share-skipped").hidden = skipped.length === 0;
  $("share-skipped-title").textContent = skipped.length === 1 ? "1 entry left out:" : `${skipped.length} entries left out:`;
  const list = $("share-skipped-list");
  list.replaceChildren();
  for (const s of skipped.slice(0, SKIPPED_SHOWN)) {
    list.append(el("li", {}, el("span", { class: "path", text: s.path }), el("span", { class: "why", text: s.reason })));
  }
  if (skipped.length > SKIPPED_SHOWN) list.append(el("li", { class: "more", text: `and ${skipped.length - SKIPPED_SHOWN} more` }));
}

// ---- receiving (upload links) ------------------------------------------------------------------

// The Files toolbar offers to receive into the folder shown; the top level has no such button
// (a folder's own row offers it instead).
function showReceiveHere() {
  const here = $("receive-here");
  here.hidden = !state.dir;
  here.textContent = state.dir ? `Receive files into ${state.dir.split("/").pop()}/` : "";
}

function openReceive(folder) {
  state.receiving = folder;
  $("receive-name").textContent = folderName(folder);
  $("receive-form").hidden = false;
  $("receive-result").hidden = true;
  $("receive-size").value = "1";
  $("receive-unit").value = "1000000000";
  $("receive-files").value = "1";
  $("receive-note").value = "";
  hidePassword($("receive-password"), $("receive-password-show"));
  fillPresets($("receive-presets"));
  $("receive-dialog").showModal();
}

async function createUploadLink(ev) {
  ev.preventDefault();
  const maxBytes = Math.round(Number($("receive-size").value) * Number($("receive-unit").value));
  const body = { folder: state.receiving, expires_in_seconds: state.expiry, max_files: Number($("receive-files").value), max_bytes: maxBytes };
  const note = $("receive-note").value.trim();
  if (note) body.note = note;
  const password = $("receive-password").value;
  if (password) body.password = password;
  try {
    showError(null);
    const created = await api("POST", "/api/uploads", body);
    $("receive-form").hidden = true;
    $("receive-result").hidden = false;
    const files = created.max_files === 1 ? "one file" : `up to ${created.max_files} files`;
    const who = password ? "Anyone with this link and the password" : "Anyone with this link";
    $("receive-what").textContent = `${who} can send ${files} of at most ${size(created.max_bytes)} each into ${folderName(created.folder)}. It stops working in ${until(created.expires_at)}, or once the files have arrived.`;
    $("receive-url").value = created.upload_url;
    $("receive-qr").src = `/admin/tunnels/${encodeURIComponent(created.tunnel_id)}/qr.svg`;
    $("receive-copy").focus();
  } catch (e) {
    $("receive-dialog").close();
    showError(e);
  }
}

// ---- open links (live) ------------------------------------------------------------------

async function loadOpen() {
  const data = await api("GET", "/admin/tunnels");
  state.links = new Map(data.tunnels.map((t) => [t.tunnel_id, t]));
  renderOpen();
  listen();
}

// Cards are kept by link id and updated in place, so that a list of members stays unfolded and
// scrolled where the owner left it while progress comes in.
function renderOpen() {
  const list = $("open-list");
  const stale = new Map([...list.children].map((li) => [li.dataset.id, li]));
  let i = 0;
  for (const t of state.links.values()) {
    const li = stale.get(t.tunnel_id) || newCard(t);
    stale.delete(t.tunnel_id);
    li.dataset.state = t.state;
    li.firstChild.replaceChildren(...cardParts(t));
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
    i++;
  }
  for (const [id, li] of stale) {
    li.remove();
    state.expanded.delete(id);
  }
  $("open-empty").hidden = state.links.size > 0;
  $("open-count").textContent = state.links.size ? String(state.links.size) : "";
  pollHashing();
}

// A card: its changing part first, then (for a ZIP) the archive's members, which never change.
// An upload link's received files keep changing, so they are part of the changing part.
function newCard(t) {
  const li = el("li", { "data-id": t.tunnel_id }, el("div", { class: "live" }));
  if (t.kind === "zip") li.append(members(t));
  return li;
}

// A link's name, leading to its own page.
const pageLink = (t, text) => el("a", { href: `#/links/${encodeURIComponent(t.tunnel_id)}`, class: "page", text });

// What a card says besides progress: whether a password is asked, or wrong ones locked the link.
function guardText(t) {
  if (t.locked) return " · locked";
  return t.password ? " · password" : "";
}

function terminateButton(t, name) {
  const terminate = el("button", { type: "button", class: "danger", text: "Terminate", "aria-label": `Terminate ${name}` });
  const what = t.kind === "upload" ? `the upload link into ${name}` : `the link to ${name}`;
  terminate.addEventListener("click", () => {
    if (!confirm(`End ${what} now? The recipient will not be able to use it.`)) return;
    guarded(async () => {
      await api("DELETE", `/admin/tunnels/${encodeURIComponent(t.tunnel_id)}`);
      state.links.delete(t.tunnel_id);
      renderOpen();
    });
  });
  return terminate;
}

function cardParts(t) {
  const name = linkName(t);
  if (t.kind === "upload") return uploadParts(t, name);
  const pct = Math.round((t.progress || 0) * 100);
  // progress covers every allowed download; bytes_served is the settled ledger (log lines).
  const total = t.file_size * t.max_downloads;
  const client = t.clients && t.clients.length ? ` · ${t.clients[t.clients.length - 1].address}` : "";
  const terminate = terminateButton(t, name);
  const note = t.note ? ` · ${t.note}` : "";
  return [
    el("div", { class: "top" }, el("strong", {}, pageLink(t, name)), terminate),
    el("div", { class: "meta", text: `${t.state} · ${t.downloads_completed}/${t.max_downloads} downloads · expires in ${until(t.expires_at)}${guardText(t)}${note}` }),
    el("progress", { class: "download", max: "100", value: String(pct), "aria-label": `Progress of ${name}` }),
    el("div", { class: "meta", text: `${pct}% · ${size(Math.round((t.progress || 0) * total))} of ${size(total)}${client}` }),
    ...(t.kind === "zip" ? archiveParts(t, name) : []),
  ];
}

// A ZIP link says so, where its files come from, and how far its CRC-32s are computed: until
// they are, a download waits for them as it reaches each file.
function archiveParts(t, name) {
  const files = t.file_count === 1 ? "1 file" : `${t.file_count} files`;
  const from = t.file_path ? ` from ${t.file_path}/` : "";
  const parts = [el("div", { class: "meta zip", text: `ZIP archive · ${files}${from} · ${size(t.file_size)}` })];
  const h = t.hashing;
  if (!h) return parts;
  const pct = h.total_bytes ? Math.floor((h.hashed_bytes * 100) / h.total_bytes) : 100;
  if (preparing(t)) {
    parts.push(el("div", { class: "meta hashing", text: `Preparing archive: ${pct}%` }),
      el("progress", { class: "hashing", max: "100", value: String(pct), "aria-label": `Preparing ${name}` }));
  } else {
    parts.push(el("div", { class: "meta hashing ok", text: "Archive ready" }));
  }
  return parts;
}

const filesWord = (n) => (n === 1 ? "1 file" : `${n} files`);

// An upload link: where files go, how many have come of how many allowed, the files still
// arriving (with how far each has got, when its length is known) and the files received.
function uploadParts(t, name) {
  const u = t.upload || {};
  const files = t.files || [];
  const count = t.file_count ?? files.length;
  const note = t.note ? ` · ${t.note}` : "";
  const limit = u.max_bytes ? ` · up to ${size(u.max_bytes)} each` : "";
  // A link's states are named for downloads; bytes coming in are "receiving" here.
  const shown = t.state === "downloading" ? "receiving" : t.state;
  const parts = [
    el("div", { class: "top" }, el("strong", {}, pageLink(t, `Receiving into ${name}`)), terminateButton(t, name)),
    el("div", { class: "meta", text: `${shown} · ${count} of ${u.max_files ?? "?"} files received${limit} · expires in ${until(t.expires_at)}${guardText(t)}${note}` }),
  ];
  const incoming = u.in_progress || [];
  if (incoming.length) parts.push(el("ul", { class: "incoming" }, ...incoming.map(incomingRow)));
  if (files.length) {
    const list = el("ul", { class: "members received" });
    for (const f of files) list.append(el("li", {}, el("span", { class: "path", text: f.name }), el("span", { class: "size", text: size(f.size) })));
    if (count > files.length) list.append(el("li", { class: "more", text: `and ${count - files.length} more` }));
    parts.push(list);
  } else if (!incoming.length) {
    parts.push(el("div", { class: "meta", text: "Nothing received yet." }));
  }
  return parts;
}

// A file on its way in. A PUT without a declared length has no end to measure against: its bar
// moves back and forth and only the bytes so far are shown.
function incomingRow(f) {
  const bar = el("progress", { class: "incoming", "aria-label": `Upload of ${f.name}` });
  let text = `${size(f.received)} received`;
  if (f.length) {
    bar.max = f.length;
    bar.value = Math.min(f.received, f.length);
    text = `${size(f.received)} of ${size(f.length)} · ${Math.floor((f.received * 100) / f.length)}%`;
  }
  return el("li", {},
    el("div", { class: "top" }, el("span", { class: "path", text: f.name }), el("span", { class: "size", text })),
    bar);
}

// The archive's members (the server sends the first ones and the count of all), folded.
function members(t) {
  const id = t.tunnel_id;
  const files = t.files || [];
  const list = el("ul", { class: "members" });
  for (const f of files) list.append(el("li", {}, el("span", { class: "path", text: f.name }), el("span", { class: "size", text: size(f.size) })));
  if (t.file_count > files.length) list.append(el("li", { class: "more", text: `and ${t.file_count - files.length} more` }));
  const details = el("details", { class: "members" }, el("summary", { text: "Files in the archive" }), list);
  details.open = state.expanded.has(id);
  details.addEventListener("toggle", () => {
    if (details.open) state.expanded.add(id);
    else state.expanded.delete(id);
  });
  return details;
}

// No event says how far hashing got, nor each upload's bytes as they come, so while the open list
// is shown and an archive is not ready or a file is on its way in, the page asks for those links
// once a second.
const preparing = (t) => t.hashing && t.hashing.hashed_bytes < t.hashing.total_bytes;
const receiving = (t) => t.upload && t.upload.in_progress && t.upload.in_progress.length > 0;
const changing = (t) => preparing(t) || receiving(t);

function pollHashing() {
  if (state.polling || $("open").hidden || ![...state.links.values()].some(changing)) return;
  state.polling = true;
  setTimeout(async () => {
    try {
      await Promise.all([...state.links.values()].filter(changing).map(refreshLink));
    } catch (e) {
      showError(e);
    }
    state.polling = false;
    if (!$("open").hidden) renderOpen();
  }, 1000);
}

async function refreshLink(t) {
  const id = t.tunnel_id;
  try {
    const stats = await api("GET", `/admin/tunnels/${encodeURIComponent(id)}/stats`);
    // An event may have closed the link while the answer was on its way.
    if (!state.links.has(id)) return;
    if (stats.tunnel.state === "closed") state.links.delete(id);
    else state.links.set(id, stats.tunnel);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) state.links.delete(id);
    else throw e;
  }
}

function listen() {
  if (state.events) return;
  const es = new EventSource("/admin/events");
  state.events = es;
  const update = (ev) => {
    const e = JSON.parse(ev.data);
    const t = e.tunnel;
    if (e.event === "closed") state.links.delete(t.tunnel_id);
    else state.links.set(t.tunnel_id, t);
    if (!$("open").hidden) renderOpen();
    else $("open-count").textContent = state.links.size ? String(state.links.size) : "";
    linkEvent(e);
  };
  for (const name of ["created", "started", "progress", "completed", "closed", "upload_started", "received", "edited", "locked"]) es.addEventListener(name, update);
  // The server dropped events for this slow reader: start again from the list.
  es.addEventListener("lagged", () => guarded(loadOpen));
  es.onerror = () => {
    es.close();
    state.events = null;
    setTimeout(() => guarded(loadOpen), 2000);
  };
}

// ---- history and status ------------------------------------------------------------------

async function loadHistory() {
  const data = await api("GET", "/admin/history?limit=200");
  const rows = $("history-rows");
  rows.replaceChildren();
  for (const t of data.tunnels) {
    const upload = t.kind === "upload";
    rows.append(el("tr", { "data-id": t.tunnel_id },
      el("td", { class: "name" }, pageLink(t, upload ? `Uploads to ${linkName(t)}` : linkName(t))),
      el("td", { class: t.close_reason === "completed" ? "ok" : "", text: t.close_detail ? `${t.close_reason}: ${t.close_detail}` : t.close_reason || "" }),
      el("td", { class: "num", text: upload ? received(t) : size(t.bytes_served) }),
      el("td", { class: "hide-narrow", text: when(t.closed_at) })));
  }
  $("history-empty").hidden = data.tunnels.length > 0;
}

// What an upload link took in: "received 2 files (3.4 MB)".
function received(t) {
  const n = t.file_count ?? (t.files || []).length;
  return `received ${filesWord(n)}${n ? ` (${size(t.bytes_received || 0)})` : ""}`;
}

async function loadStatus() {
  const [health, status] = await Promise.all([
    fetch("/health").then((r) => r.json()),
    api("GET", "/admin/monitor/status"),
  ]);
  const list = $("status-list");
  list.replaceChildren();
  const row = (k, v, cls = "") => list.append(el("dt", { text: k }), el("dd", { class: cls, text: v }));
  row("ferry", health.status, health.status === "ok" ? "ok" : "bad");
  for (const [name, c] of Object.entries(health.components)) row(name, `${c.status}${c.kind ? ` (${c.kind})` : ""}`, c.status === "ok" ? "ok" : "bad");
  const store = health.components.store;
  if (store && store.durability) row("store durability", store.durability, store.durable ? "ok" : "bad");
  if (status.store.instance) row("instance", `${status.store.instance} (owns ${status.store.owned_links ?? "?"} links)`);
  row("open links", String(status.store.open_links ?? "?"));
  row("log lines", `${status.monitor.lines} (lag ${status.monitor.lag_ms} ms)`);
  if (status.host.cpu_percent !== null) row("CPU", `${status.host.cpu_percent}%`);
  if (status.host.memory_total_bytes) row("memory", `${size(status.host.memory_used_bytes)} of ${size(status.host.memory_total_bytes)}`);
  if (status.host.data_dir_free_bytes !== null) row("free space", size(status.host.data_dir_free_bytes));
}

// ---- start ------------------------------------------------------------------

async function start() {
  $("search").addEventListener("input", () => { clearTimeout(state.searchTimer); state.searchTimer = setTimeout(() => guarded(loadFiles), 200); });
  $("share-form").addEventListener("submit", createLink);
  $("share-cancel").addEventListener("click", () => $("share-dialog").close());
  $("share-done").addEventListener("click", () => { $("share-dialog").close(); location.hash = "#open"; });
  $("share-page").addEventListener("click", () => $("share-dialog").close());
  $("share-copy").addEventListener("click", () => copyFrom($("share-url"), $("share-copy")));
  revealToggle($("share-password"), $("share-password-show"));
  $("receive-here").addEventListener("click", () => openReceive(state.dir));
  $("receive-form").addEventListener("submit", createUploadLink);
  $("receive-cancel").addEventListener("click", () => $("receive-dialog").close());
  $("receive-done").addEventListener("click", () => { $("receive-dialog").close(); location.hash = "#open"; });
  $("receive-copy").addEventListener("click", () => copyFrom($("receive-url"), $("receive-copy")));
  revealToggle($("receive-password"), $("receive-password-show"));
  setupLinkPage(showError);
  $("select-all").addEventListener("change", selectAll);
  $("selection-share").addEventListener("click", shareSelection);
  $("selection-clear").addEventListener("click", () => { state.selected.clear(); renderSelection(); });
  $("logout").addEventListener("click", () => guarded(async () => { await api("POST", "/logout"); location.reload(); }));
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    guarded(async () => {
      await api("POST", "/login", { token: $("token").value });
      $("token").value = "";
      await boot();
    });
  });
  window.addEventListener("hashchange", route);
  await guarded(boot);
}

async function boot() {
  const cfg = await api("GET", "/admin/config");
  state.maxExpiry = cfg.config.MAX_TUNNEL_SECONDS;
  state.defaultExpiry = cfg.config.FERRY_DEFAULT_EXPIRES_SECONDS ?? state.maxExpiry;
  state.defaultDownloads = cfg.config.FERRY_DEFAULT_MAX_DOWNLOADS ?? 1;
  state.maxDownloads = cfg.config.FERRY_MAX_DOWNLOADS_LIMIT ?? 100;
  $("logout").hidden = cfg.config.FERRY_ADMIN_TOKEN !== "[set]";
  route();
}

start();
