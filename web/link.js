// One link's page (#/links/<id>): its URL to copy again and its QR code, who used it and how
// (clients and requests, kept current by the events of the link), and what the owner can change:
// expiry, downloads, password and bandwidth, a new URL, or ending it now.

import { api, ApiError, size, when, until, linkName } from "/api.js";
import { $, el, copyFrom, revealToggle, hidePassword } from "/dom.js";

// Steps the expiry can move by, each added to the link's current expiry.
const STEPS = [["+15 min", 900], ["+1 hour", 3600], ["+1 day", 86400], ["+7 days", 604800]];

// `id` is the link shown; `url` its download URL as last fetched (it changes on rotation).
// `onUnauthorised` is how the app asks for the admin token again.
const page = { id: null, tunnel: null, url: "", qr: 0, timer: null, onUnauthorised: null };

const path = (suffix = "") => `/admin/tunnels/${encodeURIComponent(page.id)}${suffix}`;

export function setupLinkPage(onUnauthorised) {
  page.onUnauthorised = onUnauthorised;
  $("link-copy").addEventListener("click", () => copyFrom($("link-url"), $("link-copy")));
  $("link-rotate").addEventListener("click", rotate);
  $("link-end").addEventListener("click", end);
  const submit = (id, fn) => $(id).addEventListener("submit", (ev) => { ev.preventDefault(); fn(); });
  submit("link-expires-form", () => setExpiry(new Date($("link-expires-at").value)));
  submit("link-downloads-form", () => {
    const n = Number($("link-downloads").value);
    edit({ max_downloads: n }, `Downloads allowed: ${n}.`, $("link-downloads-form"));
  });
  submit("link-password-form", () => {
    edit({ password: $("link-password").value }, "Password set: recipients are asked for it.", $("link-password-form"));
  });
  $("link-password-clear").addEventListener("click", () => edit({ password: null }, "Password removed.", $("link-password-form")));
  revealToggle($("link-password"), $("link-password-show"));
  submit("link-rate-form", () => {
    const kb = $("link-rate").value.trim();
    const rate = kb ? Math.round(Number(kb) * 1000) : null;
    const said = rate ? `Bandwidth capped at ${size(rate)}/s.` : "Bandwidth cap removed.";
    edit({ rate_limit_bytes_per_second: rate }, said, $("link-rate-form"));
  });
}

// Shows link `id`, fetching it afresh; its fields take the link's values. Messages stay while the
// page shows the same link.
export async function showLinkPage(id) {
  if (page.id !== id) {
    page.id = id;
    page.url = "";
    say("");
    failed(null);
  }
  page.tunnel = null;
  await load();
}

// An event of the shown link: fetch it again, at most four times a second.
export function linkEvent(e) {
  if ($("link").hidden || !e.tunnel || e.tunnel.tunnel_id !== page.id || page.timer) return;
  page.timer = setTimeout(() => {
    page.timer = null;
    load().catch(report);
  }, 250);
}

async function load() {
  const id = page.id;
  const stats = await api("GET", path("/stats"));
  if (id !== page.id) return;
  const first = !page.tunnel;
  page.tunnel = stats.tunnel;
  render(stats, first);
}

// Runs an action of the owner's. What it says, or the server's refusal (which names the field),
// is shown beside `near` (the form sent), or at the top of the page.
async function attempt(fn, near) {
  const messages = $("link-messages");
  if (near) near.after(messages);
  else $("link-live").before(messages);
  try {
    failed(null);
    await fn();
  } catch (e) {
    report(e);
  }
}

function report(e) {
  if (e instanceof ApiError && e.status === 401) page.onUnauthorised(e);
  else failed(e);
}

function failed(err) {
  const box = $("link-error");
  box.hidden = !err;
  box.textContent = err ? err.message || String(err) : "";
  if (err) {
    say("");
    box.scrollIntoView({ block: "nearest" });
  }
}

function say(text) {
  $("link-said").textContent = text;
}

function edit(body, said, near) {
  return attempt(async () => {
    await api("PATCH", path(), body);
    page.tunnel = null;
    say(said);
    await load();
  }, near);
}

function setExpiry(at) {
  const form = $("link-expires-form");
  if (Number.isNaN(at.getTime())) {
    attempt(() => { throw new Error("Choose a date and time."); }, form);
    return;
  }
  edit({ expires_at: at.toISOString() }, `Expires ${when(at.toISOString())}.`, form);
}

function rotate() {
  if (!confirm("Give the link a new URL? The current URL stops working at once.")) return;
  attempt(async () => {
    const r = await api("POST", path("/rotate"));
    page.tunnel = null;
    showUrl(r.download_url);
    say("New URL made: the old one no longer works.");
    await load();
  });
}

function end() {
  const name = linkName(page.tunnel || {});
  if (!confirm(`End the link to ${name} now? Nobody will be able to use it.`)) return;
  attempt(async () => {
    await api("DELETE", path());
    say("The link has ended.");
    await load();
  });
}

// The URL, and its QR code fetched again whenever the URL changes.
function showUrl(url) {
  if (url === page.url) return;
  page.url = url;
  $("link-url").value = url;
  page.qr += 1;
  $("link-qr").src = `${path("/qr.svg")}?v=${page.qr}`;
}

// `first`: the link was just fetched for this page or after an edit, so the fields take its
// values. Otherwise an event refreshed it, and what the owner is typing stays.
function render(stats, first) {
  const t = stats.tunnel;
  const open = t.state !== "closed";
  $("link-name").textContent = t.kind === "upload" ? `Receiving into ${linkName(t)}` : linkName(t);
  $("link-meta").textContent = summary(t);
  $("link-locked").hidden = !t.locked;
  $("link-live").hidden = !open;
  $("link-change").hidden = !open;
  if (open) showUrl(stats.download_url);
  if (open) renderChange(t, first);
  renderClients(t);
  renderRequests(stats.requests);
}

function summary(t) {
  if (t.state === "closed") {
    const why = t.close_detail ? `${t.close_reason}: ${t.close_detail}` : t.close_reason;
    return `Closed (${why}) ${when(t.closed_at)} · ${size(t.bytes_served)} served`;
  }
  const uses = t.kind === "upload"
    ? `${t.file_count} of ${t.upload?.max_files ?? "?"} files received`
    : `${t.downloads_completed}/${t.max_downloads} downloads · ${Math.round((t.progress || 0) * 100)}%`;
  const note = t.note ? ` · ${t.note}` : "";
  return `${t.state} · ${uses} · ${size(t.bytes_served)} served${note}`;
}

function renderChange(t, first) {
  $("link-expires").textContent = `${when(t.expires_at)} (in ${until(t.expires_at)})`;
  $("link-ceiling").textContent = `At the latest ${when(t.max_expires_at)}.`;
  renderSteps(t);
  const input = $("link-expires-at");
  input.min = localInput(new Date());
  input.max = localInput(new Date(t.max_expires_at));
  $("link-downloads-form").hidden = t.kind === "upload";
  $("link-password-state").textContent = t.password ? "(one is set)" : "(none)";
  $("link-password-clear").hidden = !t.password;
  const policy = [];
  if (t.allow_cidrs.length) policy.push(`Only from ${t.allow_cidrs.join(", ")}`);
  if (t.notify_url) policy.push("Sends its own notifications");
  $("link-policy").textContent = policy.join(" · ");
  $("link-policy").hidden = policy.length === 0;
  if (!first) return;
  input.value = localInput(new Date(t.expires_at));
  $("link-downloads").value = String(t.max_downloads);
  hidePassword($("link-password"), $("link-password-show"));
  $("link-rate").value = t.rate_limit_bytes_per_second ? String(t.rate_limit_bytes_per_second / 1000) : "";
}

// Each step the link's ceiling allows from its current expiry, and the ceiling itself.
function renderSteps(t) {
  const now = Date.parse(t.expires_at);
  const ceiling = Date.parse(t.max_expires_at);
  const steps = STEPS.filter(([, s]) => now + s * 1000 <= ceiling).map(([label, s]) => [label, new Date(now + s * 1000), s]);
  const box = $("link-steps");
  box.replaceChildren(...steps.map(([label, at, s]) => el("button", {
    type: "button", class: "quiet", text: label, "data-seconds": String(s), onclick: () => setExpiry(at),
  })));
  if (ceiling > now) {
    box.append(el("button", { type: "button", class: "quiet", text: "Latest allowed", "data-seconds": "max", onclick: () => setExpiry(new Date(ceiling)) }));
  }
}

function renderClients(t) {
  const rows = t.clients.map((c) => el("tr", {},
    el("td", { class: "who" }, el("span", { text: c.address }), el("div", { class: "ua", text: c.user_agent || "(no User-Agent)" })),
    el("td", { class: "num", text: size(c.bytes) })));
  $("link-clients").replaceChildren(...rows);
  $("link-clients-empty").hidden = rows.length > 0;
}

// Requests still running first, then those that ended, newest first.
function renderRequests(requests) {
  const running = requests.filter((r) => r.in_flight);
  const ended = requests.filter((r) => !r.in_flight).reverse();
  const rows = [...running, ...ended].map((r) => el("tr", { class: r.in_flight ? "running" : "" },
    el("td", { class: "hide-narrow", text: new Date(r.time).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }) }),
    el("td", { class: "who" }, el("span", { text: `${r.method} from ${r.client}` }), el("div", { class: "ua", text: r.user_agent || "(no User-Agent)" })),
    el("td", { text: r.in_flight ? "sending" : `${r.status}${r.completed ? "" : " (cut short)"}` }),
    el("td", { class: "num", text: size(r.bytes) }),
    el("td", { class: "hide-narrow", text: r.range || "" })));
  $("link-requests").replaceChildren(...rows);
  $("link-requests-empty").hidden = rows.length > 0;
}

// A time as an <input type="datetime-local"> holds it: local, to the minute.
function localInput(d) {
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}
