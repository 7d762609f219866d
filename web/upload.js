// The page a recipient opens to send files through an upload link. Files go one after another
// with tus 1.0: a POST creates the upload, then PATCHes of 8 MiB carry the bytes from the
// server's offset. A dropped connection, a server restart or a reload of the page therefore
// continues where the server stopped instead of starting again.
//
// The page is one self-contained document: its policy allows only its own inline style and
// script, and requests to its own origin. The server refuses anything it does not allow by
// closing the connection without a word, which looks exactly like a dropped connection here.
// The page's own address answers for as long as the link is open, so asking for it tells the two
// apart.

const CHUNK = 8 * 1024 * 1024;
// How long to keep trying after the last step forward before giving a file up.
const RETRY_FOR_MS = 2 * 60 * 1000;
const FIRST_PAUSE_MS = 1000;
const LONGEST_PAUSE_MS = 10 * 1000;
// A request that shows no sign of life for this long is abandoned; the server is then asked how
// far it got.
const SILENT_MS = 30 * 1000;
// Where an unfinished upload lives is remembered this long, so that a reload can continue it.
const KEPT_MS = 7 * 24 * 3600 * 1000;
const STORED = "ferry-upload:";

const $ = (id) => document.getElementById(id);
// The link's own address, with its token; the fragment plays no part.
const PAGE = location.href.split("#")[0];

const jobs = [];
let running = false;

// No answer the upload can use, but one worth waiting for: no response at all, a 5xx, or a
// request that went silent.
class Lost extends Error {}
// The server answered and the file cannot be sent: saying why is all that is left.
class Refused extends Error {}

// ---- requests -------------------------------------------------------------------------------

// One tus request. XMLHttpRequest rather than fetch, because it reports how much of a body has
// been sent, which is what the progress bar shows. Resolves with any HTTP answer; rejects with
// Lost when there is none.
function request(method, url, headers = {}, body = null, onSent = null) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open(method, url);
    x.setRequestHeader("Tus-Resumable", "1.0.0");
    for (const [name, value] of Object.entries(headers)) x.setRequestHeader(name, value);
    let heard = Date.now();
    const watch = setInterval(() => { if (Date.now() - heard > SILENT_MS) x.abort(); }, 1000);
    const settle = (fn) => { clearInterval(watch); fn(); };
    x.upload.addEventListener("progress", (e) => { heard = Date.now(); if (onSent) onSent(e.loaded); });
    x.addEventListener("readystatechange", () => { heard = Date.now(); });
    x.addEventListener("load", () => settle(() => resolve({ status: x.status, header: (n) => x.getResponseHeader(n) })));
    for (const ev of ["error", "abort", "timeout"]) {
      x.addEventListener(ev, () => settle(() => reject(new Lost("The connection was lost."))));
    }
    x.send(body);
  });
}

async function pageAnswers() {
  try {
    const r = await fetch(PAGE, { cache: "no-store", credentials: "same-origin" });
    return r.ok;
  } catch {
    return false;
  }
}

// Sends a request the server may refuse by closing the connection (which a proxy in front of it,
// such as Tailscale Funnel, turns into a 502). Silence while the page still answers is a refusal,
// not a lost connection; it is asked twice, in case the connection came back in between. A
// refusal gives null.
async function answered(send) {
  for (let tries = 1; ; tries++) {
    let r;
    try {
      r = await send();
      if (r.status !== 502) return r;
    } catch (e) {
      if (!(e instanceof Lost)) throw e;
    }
    if (!(await pageAnswers())) throw new Lost(r ? `The server answered ${r.status}.` : "The connection was lost.");
    if (tries === 2) return null;
  }
}

function refusal(status) {
  if (status === 413) return new Refused("This file is larger than this link accepts.");
  if (status === 507) return new Refused("There is no room for this file on the other side.");
  if (status >= 500) return new Lost(`The server answered ${status}.`);
  return new Refused(`The server refused this file (${status}).`);
}

function base64(text) {
  let bin = "";
  for (const b of new TextEncoder().encode(text)) bin += String.fromCharCode(b);
  return btoa(bin);
}

// ---- one file's upload --------------------------------------------------------------------

// Creates the upload on the server: its address is where every later request goes.
async function create(job) {
  const r = await answered(() => request("POST", PAGE, {
    "Upload-Length": String(job.file.size),
    "Upload-Metadata": `filename ${base64(job.file.name)}`,
  }));
  if (!r) throw new Refused("This link takes no more files.");
  const where = r.header("Location");
  if (r.status !== 201 || !where) throw refusal(r.status);
  job.location = new URL(where, PAGE).href;
  job.offset = 0;
  remember(job);
}

// Asks the server how much of the file it holds. An upload it no longer knows was finished if
// every byte had been sent (only the answer to the last chunk was lost); else it was removed
// (after sitting idle, say) and starts again from nothing.
async function askOffset(job) {
  const r = await answered(() => request("HEAD", job.location));
  if (r && r.status >= 500) throw refusal(r.status);
  if (r && r.status === 200) {
    const offset = Number(r.header("Upload-Offset"));
    const length = Number(r.header("Upload-Length"));
    if (Number.isSafeInteger(offset) && length === job.file.size && offset >= 0 && offset <= length) {
      job.offset = offset;
      if (offset < length) job.sentAll = false;
      return;
    }
  }
  forget(job);
  if (job.sentAll) {
    job.offset = job.file.size;
    return;
  }
  job.location = null;
  job.offset = null;
}

// Sends the next chunk from the server's offset. A 409 means the server has a different offset:
// it is asked again before going on.
async function patch(job) {
  const { file } = job;
  const start = job.offset;
  const end = Math.min(start + CHUNK, file.size);
  const r = await request("PATCH", job.location, {
    "Upload-Offset": String(start),
    "Content-Type": "application/offset+octet-stream",
  }, file.slice(start, end), (sent) => {
    showBytes(job, start + sent);
    if (end === file.size && sent >= end - start) job.sentAll = true;
  });
  if (r.status === 204) {
    const offset = Number(r.header("Upload-Offset"));
    job.offset = Number.isSafeInteger(offset) && offset > start && offset <= file.size ? offset : null;
    job.conflicts = 0;
    return;
  }
  if (r.status !== 409) throw refusal(r.status);
  job.offset = null;
  if (++job.conflicts > 3) throw new Refused("The server and this page disagree about how much has arrived.");
}

// Takes the upload as far as it goes: on to the end, or to the first failure.
async function advance(job, forward) {
  for (;;) {
    if (job.location && job.offset === null) {
      setState(job, job.state, "Resuming…");
      await askOffset(job);
    }
    if (!job.location) await create(job);
    setState(job, "uploading", "Uploading");
    showBytes(job, job.offset);
    if (job.offset >= job.file.size) return;
    const before = job.offset;
    await patch(job);
    if (job.offset !== null && job.offset > before) forward();
  }
}

// Sends one file, waiting and trying again after each lost connection (1 s, 2 s, 4 s, ... at
// most 10 s apart) for as long as the last step forward is less than two minutes old.
async function send(job) {
  let pause = FIRST_PAUSE_MS;
  let lostSince = null;
  const forward = () => { pause = FIRST_PAUSE_MS; lostSince = null; };
  for (;;) {
    try {
      await advance(job, forward);
      return finish(job);
    } catch (e) {
      if (!(e instanceof Lost)) return fail(job, e.message, e instanceof Refused);
      lostSince ??= Date.now();
      if (Date.now() - lostSince >= RETRY_FOR_MS) return giveUp(job);
      job.offset = null;
      await countDown(job, pause);
      pause = Math.min(pause * 2, LONGEST_PAUSE_MS);
    }
  }
}

async function countDown(job, ms) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    setState(job, "retrying", `Connection lost · retrying in ${Math.ceil((until - Date.now()) / 1000)} s`);
    await new Promise((r) => setTimeout(r, Math.min(1000, until - Date.now())));
  }
}

function giveUp(job) {
  const why = job.sentAll
    ? "Every byte was sent, but no confirmation came back: the file has probably arrived."
    : "The server could not be reached for two minutes. Try again, or reload the page and choose the file again: it continues where it stopped.";
  fail(job, why, false);
}

// ---- remembering uploads across reloads ---------------------------------------------------------

function storageKey(file) {
  return STORED + JSON.stringify([location.pathname, file.name, file.size, file.lastModified]);
}

function remember(job) {
  const value = { url: job.location, name: job.file.name, size: job.file.size, at: Date.now() };
  try { localStorage.setItem(job.key, JSON.stringify(value)); } catch { /* storage may be off */ }
}

function forget(job) {
  try { localStorage.removeItem(job.key); } catch { /* storage may be off */ }
}

function recall(key) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    if (!v || typeof v.url !== "string" || new URL(v.url).origin !== location.origin) return null;
    return v;
  } catch {
    return null;
  }
}

// The unfinished uploads of this link that this browser remembers (and forgets old ones of any
// link).
function unfinished() {
  const found = [];
  let keys = [];
  try { keys = Object.keys(localStorage).filter((k) => k.startsWith(STORED)); } catch { return found; }
  for (const key of keys) {
    const v = recall(key);
    let path = null;
    try { path = JSON.parse(key.slice(STORED.length))[0]; } catch { /* not one of ours */ }
    if (!v || Date.now() - v.at > KEPT_MS) {
      try { localStorage.removeItem(key); } catch { /* storage may be off */ }
    } else if (path === location.pathname && !jobs.some((j) => j.key === key)) {
      found.push(v);
    }
  }
  return found;
}

function showUnfinished() {
  const list = unfinished();
  $("unfinished").hidden = list.length === 0;
  $("unfinished-list").replaceChildren(...list.map((v) => {
    const li = document.createElement("li");
    li.textContent = `${v.name} (${size(v.size)})`;
    return li;
  }));
}

// ---- the list of files ------------------------------------------------------------------------

function size(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = n, u = 0;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function newRow(file) {
  const row = el("li");
  const top = el("div", "top");
  top.append(el("span", "name", file.name), el("span", "status", "Waiting"));
  const bar = el("progress");
  bar.max = Math.max(file.size, 1);
  bar.value = 0;
  bar.setAttribute("aria-label", `Upload of ${file.name}`);
  row.append(top, bar, el("div", "bytes"), el("p", "why"));
  return row;
}

function setState(job, state, status) {
  job.state = state;
  job.row.dataset.state = state;
  job.row.querySelector(".status").textContent = status;
}

function showBytes(job, n) {
  const total = job.file.size;
  const pct = total ? Math.floor((n * 100) / total) : 100;
  job.row.querySelector("progress").value = total ? n : 1;
  job.row.querySelector(".bytes").textContent = `${size(n)} of ${size(total)} · ${pct}%`;
}

function finish(job) {
  forget(job);
  job.sentAll = false;
  showBytes(job, job.file.size);
  setState(job, "done", "Received ✓");
  job.row.querySelector(".why").textContent = "";
}

// A refused file is forgotten (trying it again cannot help); one that lost its connection keeps
// its place on the server, and a button offers to try again.
function fail(job, why, refused) {
  if (refused) forget(job);
  setState(job, "failed", "Not sent");
  const box = job.row.querySelector(".why");
  box.textContent = `${why} `;
  if (refused) return;
  const again = el("button", "again", "Try again");
  again.type = "button";
  again.addEventListener("click", () => {
    box.textContent = "";
    setState(job, "uploading", "Waiting");
    job.offset = null;
    queue(job);
  });
  box.append(again);
}

// ---- the queue ----------------------------------------------------------------------------------

function add(files) {
  for (const file of files) {
    const key = storageKey(file);
    // The same file chosen again while it is still on its way is the same upload.
    if (jobs.some((j) => j.key === key && (j.state === "uploading" || j.state === "retrying"))) continue;
    const kept = recall(key);
    const job = {
      file, key, row: newRow(file), location: kept ? kept.url : null, offset: null,
      state: "uploading", sentAll: false, conflicts: 0, queued: false,
    };
    setState(job, "uploading", "Waiting");
    jobs.push(job);
    $("uploads").append(job.row);
    queue(job);
  }
  showUnfinished();
}

const waiting = [];

function queue(job) {
  if (job.queued) return;
  job.queued = true;
  waiting.push(job);
  run();
}

async function run() {
  if (running) return;
  running = true;
  notice("");
  while (waiting.length) {
    const job = waiting.shift();
    job.queued = false;
    await send(job);
    showUnfinished();
  }
  running = false;
  summarise();
}

function summarise() {
  const done = jobs.filter((j) => j.state === "done").length;
  const failed = jobs.filter((j) => j.state === "failed").length;
  const files = (n) => (n === 1 ? "1 file" : `${n} files`);
  let text = done ? `${files(done)} received.` : "";
  if (failed) text += `${text ? " " : ""}${files(failed)} not sent.`;
  notice(text, failed > 0);
}

function notice(text, bad = false) {
  $("notice").textContent = text;
  $("notice").classList.toggle("bad", bad);
}

// Files dropped on the page. A folder cannot be sent as it is; it is left out and said so.
function dropped(data) {
  const files = [];
  const folders = [];
  for (const item of data.items ? [...data.items] : []) {
    if (item.kind !== "file") continue;
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    const file = item.getAsFile();
    if (entry && entry.isDirectory) folders.push(entry.name);
    else if (file) files.push(file);
  }
  if (!data.items) files.push(...data.files);
  add(files);
  if (folders.length) {
    notice(`Folders cannot be sent as they are (choose the files inside them, or a ZIP): ${folders.join(", ")}`, true);
  }
}

function start() {
  const input = $("file");
  input.addEventListener("change", () => {
    add([...input.files]);
    // So that choosing the same file again is a change too.
    input.value = "";
  });
  const zone = $("drop");
  // The whole page takes drops: a file dropped beside the zone would otherwise open in the tab.
  window.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  window.addEventListener("dragleave", (e) => { if (!e.relatedTarget) zone.classList.remove("over"); });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer) dropped(e.dataTransfer);
  });
  window.addEventListener("beforeunload", (e) => {
    if (running) e.preventDefault();
  });
  showUnfinished();
}

start();
