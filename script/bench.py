#!/usr/bin/env python3
"""ferry's benchmarks: ferry against its physical limit and its peers, side by side in one run.

Every comparison runs its variants interleaved (A, B, A, B, ...) and reports medians of at least
five runs and their ratio: these machines are noisy, so absolute numbers are context only. Files
are read once before measuring so that they come from the page cache. Everything binds loopback;
every load is bounded in time.

Usage: script/bench [--quick]   (writes BENCHMARKS.md; --quick: fewer runs, for trying it out)
FERRY_BIN=<path> measures another build of ferry (say, the last commit's) instead of
target/release/ferry, for a before-and-after on the same machine.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.parse
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FERRY = os.environ.get("FERRY_BIN") or os.path.join(ROOT, "target", "release", "ferry")
QUICK = "--quick" in sys.argv
RUNS = 3 if QUICK else 5
# A 1 GiB download takes a third of a second from nginx, and its rate swings by a third from run
# to run here (2.5 to 4.3 GB/s within one run): more runs cost little and steady the median.
DOWNLOAD_RUNS = 3 if QUICK else 11
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))  # creation throughput
WRK_SECONDS = 3 if QUICK else 5
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
results = []  # (section, markdown)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def make_file(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path, "wb") as f:
            chunk = os.urandom(1 << 20)
            left = size
            while left:
                n = min(left, len(chunk))
                f.write(chunk[:n])
                left -= n
    with open(path, "rb") as f:  # into the page cache
        while f.read(1 << 24):
            pass


def check_quiet(path, problem, who):
    """Stops the run if a line of the log at `path` matches `problem`."""
    with open(path, errors="replace") as f:
        said = [line for line in f if re.search(problem, line)]
    if said:
        raise SystemExit(f"bench: {who} logged {len(said)} problems, the first: {said[0]}")


def median(xs):
    return statistics.median(xs)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Ferry:
    """A release `ferry serve` in a temp dir, on free loopback ports."""

    def __init__(self, work, data, **env):
        self.work = work
        os.makedirs(work, exist_ok=True)
        self.admin_port = free_port()
        self.public_port = free_port()
        self.env = {
            "PATH": os.environ["PATH"],
            "NAS_MOUNT_PATH": data,
            "FERRY_STATE_DIR": os.path.join(work, "state"),
            "FERRY_TUNNELS_DIR": os.path.join(work, "tunnels"),
            "FERRY_LOGS_DIR": os.path.join(work, "logs"),
            "FERRY_ADMIN_ADDR": f"127.0.0.1:{self.admin_port}",
            "FERRY_PUBLIC_ADDR": f"127.0.0.1:{self.public_port}",
            "BASE_URL": f"http://127.0.0.1:{self.public_port}",
            "FERRY_LOG": "warn",
            "FERRY_REQ_PER_CLIENT": "1000000",
            "FERRY_CONN_PER_CLIENT": "4096",
            "FERRY_BAN_AFTER_FAILS": "0",
        }
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(self.work, "ferry.log"), "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([FERRY, "serve"], env=self.env, cwd=self.work,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("ferry did not start; see " + self.log.name)
            time.sleep(0.01)
        self.started_in = time.perf_counter() - t0
        if self.env.get("FERRY_NGINX") != "external":
            wait_port(self.public_port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=30)

    def create(self, conn, path, **extra):
        body = json.dumps({"file_path": path, **extra})
        conn.request("POST", "/api/links", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 201:
            raise SystemExit(f"create failed: {r.status} {data!r}")
        return json.loads(data)

    def get(self, path):
        c = self.conn()
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()

    def check_quiet(self):
        """ferry records its nginx's error log as its own warnings: a problem there stops the run."""
        check_quiet(os.path.join(self.work, "ferry.log"), r"ferry::nginx.*\[(error|crit|alert|emerg)\]",
                    "ferry's nginx")

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])


class Nginx:
    """A plain nginx for the baselines: a static file, optionally behind auth_request."""

    def __init__(self, work, root, auth_socket=None, log_dir=None, default_log=False):
        self.port = free_port()
        self.prefix = os.path.join(work, f"nginx-{self.port}")
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        check = ""
        upstream = ""
        check_location = ""
        if auth_socket:
            upstream = f"upstream check {{ server unix:{auth_socket}; keepalive 128; }}"
            check = """
            auth_request /check;"""
            check_location = """
        location = /check {
            internal;
            proxy_pass http://check;
            proxy_http_version 1.1;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Connection "";
        }"""
        log = "access_log off;"
        if default_log:
            # What nginx does when a config says nothing: one `combined` line per request, unbuffered.
            log = f"access_log {self.prefix}/access.log combined;"
        if log_dir:
            # ferry's own log format and time slots, so that ferry can follow it.
            tpl = open(os.path.join(ROOT, "nginx", "nginx.conf")).read()
            fmt = re.search(r"log_format ferry .*?;\n", tpl, re.S).group(0)
            # 10 s slots (ferry's default is 100 s), so that runs of a few seconds cross slot changes.
            log = (fmt + '\n    map $msec $ferry_log_slot { "~^(?<s>\\d+)\\d\\." $s; default "0"; }\n'
                   '    map $uri $ferry_link { default ""; }\n'
                   '    map $http_user_agent $ferry_previewer { default 0; }\n'
                   '    map $uri $ferry_claim { default "c0.000000000000"; }\n'
                   '    open_log_file_cache max=8 inactive=10s valid=1s min_uses=1;\n'
                   f'    access_log {log_dir}/access-$ferry_log_slot.log ferry;')
        # Workers as the invoking user, as ferry's managed nginx runs them (so they can reach the
        # check socket and the files).
        user = "user root;" if os.geteuid() == 0 else ""
        conf = f"""
{user}
worker_processes auto;
pid {self.prefix}/nginx.pid;
error_log stderr error;
daemon off;
events {{ worker_connections 4096; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    max_ranges 1;
    client_body_temp_path {self.prefix}/tmp;
    proxy_temp_path {self.prefix}/tmp;
    fastcgi_temp_path {self.prefix}/tmp;
    uwsgi_temp_path {self.prefix}/tmp;
    scgi_temp_path {self.prefix}/tmp;
    {log}
    {upstream}
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        location / {{{check}
        }}{check_location}
    }}
}}
"""
        self._run(conf)

    def _run(self, conf):
        path = os.path.join(self.prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.stderr = os.path.join(self.prefix, "stderr.log")
        with open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen([NGINX, "-p", self.prefix, "-c", path],
                                         stdout=subprocess.DEVNULL, stderr=err)
        wait_port(self.port)

    def check_quiet(self):
        """A baseline that logs an error per request measures its error log: stop the run."""
        check_quiet(self.stderr, r"\[(warn|error|crit|alert|emerg)\]", f"nginx on port {self.port}")

    def stop(self):
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class DavNginx(Nginx):
    """A plain nginx that stores what is PUT to it (its DAV module), the upload baseline."""

    def __init__(self, work, root):
        self.port = free_port()
        self.prefix = os.path.join(work, f"nginx-dav-{self.port}")
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        self._run(f"""
{user}
worker_processes auto;
pid {self.prefix}/nginx.pid;
error_log stderr error;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.prefix}/tmp;
    proxy_temp_path {self.prefix}/tmp;
    fastcgi_temp_path {self.prefix}/tmp;
    uwsgi_temp_path {self.prefix}/tmp;
    scgi_temp_path {self.prefix}/tmp;
    server {{
        listen 127.0.0.1:{self.port};
        root {root};
        client_max_body_size 0;
        location / {{ dav_methods PUT DELETE; }}
    }}
}}
""")


def curl_put_speed(path, url):
    """Bytes per second of one upload, as curl measures it, and the HTTP status."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-T", path, "-w", "%{http_code} %{speed_upload}", url],
                         capture_output=True, text=True, timeout=300)
    code, speed = out.stdout.split()
    if code not in ("201", "204"):
        raise SystemExit(f"upload to {url} answered {code}: {out.stderr}")
    return float(speed)


def curl_speed(url):
    """Bytes per second of one download, as curl measures it."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{size_download}",
                          url], capture_output=True, text=True, timeout=120)
    code, speed, size = out.stdout.split()
    if code not in ("200", "206"):
        raise SystemExit(f"download of {url} answered {code}: {out.stderr}")
    return float(speed), int(size)


# Walks the file in 4 KiB ranges that no request asks for twice (each wrk thread walks its own
# half of the file, as a download manager's segments do): a link hands out each byte of a
# download once, and asking for the same bytes again and again would draw on its re-send budget
# until it is refused.
WALK_LUA = """
local threads = 0
function setup(thread)
  thread:set("offset", threads * 262144)
  threads = threads + 1
end
local n = 0
request = function()
  local s = (offset + n) * 4096
  n = n + 1
  return wrk.format(nil, nil, {["Range"] = "bytes=" .. s .. "-" .. (s + 4095)})
end
"""


def wrk(url, conns, headers=(), seconds=None, script=None):
    """Requests per second from wrk. Refusals stop the run: a non-2xx answer, or nginx's 444,
    which closes the connection unanswered (wrk counts it among its socket errors)."""
    args = ["wrk", "-t2", f"-c{conns}", f"-d{seconds or WRK_SECONDS}s", "--latency"]
    for h in headers:
        args += ["-H", h]
    if script:
        args += ["-s", script]
    out = subprocess.run(args + [url], capture_output=True, text=True, timeout=120).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if (non2xx and int(non2xx.group(1)) > 0) or (errors and any(int(n) > 0 for n in errors.groups())):
        raise SystemExit(f"wrk saw refusals or errors against {url}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def fastapi_server(work, data):
    port = free_port()
    app = os.path.join(work, "fastapi_app.py")
    with open(app, "w") as f:
        f.write(f"""
from fastapi import FastAPI
from fastapi.responses import FileResponse
app = FastAPI()
@app.get("/{{name}}")
def get(name: str):
    return FileResponse({data!r} + "/" + name, filename=name)
""")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def runs_table(what, unit, runs, fmt):
    """Medians of each variant's runs, and a table of them with every run."""
    m = {k: median(v) for k, v in runs.items()}
    return m, table([what, f"{unit} (median)", "runs"],
                    [[k, fmt(v), " ".join(fmt(x) for x in runs[k])] for k, v in m.items()])


def verdict(ok):
    return "met" if ok else "**missed**"


# ---------------------------------------------------------------------------------------------

def bench_download(work, data):
    """1. One 1 GiB download: bare nginx, a ferry link, FastAPI FileResponse."""
    make_file(os.path.join(data, "big.bin"), 1 << 30)
    bare = Nginx(work, data)
    ferry = Ferry(os.path.join(work, "dl"), data)
    api, api_port = fastapi_server(work, data)
    c = ferry.conn()
    speeds = {"nginx": [], "ferry": [], "fastapi": []}
    try:
        for _ in range(DOWNLOAD_RUNS):
            speeds["nginx"].append(curl_speed(f"http://127.0.0.1:{bare.port}/big.bin")[0])
            url = ferry.create(c, "big.bin")["download_url"]
            s, n = curl_speed(url)
            assert n == 1 << 30, n
            speeds["ferry"].append(s)
            speeds["fastapi"].append(curl_speed(f"http://127.0.0.1:{api_port}/big.bin")[0])
    finally:
        bare.stop()
        ferry.stop()
        api.terminate()
    m, runs = runs_table("server", "GB/s", speeds, lambda x: f"{x / 1e9:.2f}")
    r_nginx = m["ferry"] / m["nginx"]
    r_api = m["ferry"] / m["fastapi"]
    results.append(("1. One 1 GiB download", runs
        + f"\n\nferry / bare nginx = **{r_nginx:.3f}** (target ≥ 0.95: {verdict(r_nginx >= 0.95)}); "
          f"ferry / FastAPI FileResponse = **{r_api:.2f}×**."))


def wait_hashed(ferry, tunnel_id, timeout=120):
    """Waits until a ZIP link's CRC-32s are all computed."""
    deadline = time.time() + timeout
    while True:
        status, body = ferry.get(f"/admin/tunnels/{tunnel_id}/stats")
        hashing = json.loads(body)["tunnel"]["hashing"] if status == 200 else None
        if hashing and hashing["hashed_bytes"] == hashing["total_bytes"]:
            return
        if time.time() > deadline:
            raise SystemExit(f"the archive of {tunnel_id} was not hashed within {timeout} s")
        time.sleep(0.002)


def bench_zip(work, data):
    """8. A 1 GiB ZIP of 100 files through a link, against bare nginx sending one 1 GiB file."""
    files = 100
    each = (1 << 30) // files
    for i in range(files):
        make_file(os.path.join(data, "album", f"photo-{i:03}.jpg"), each)
    make_file(os.path.join(data, "one.bin"), 1 << 30)
    bare = Nginx(work, data)
    ferry = Ferry(os.path.join(work, "zip"), data)
    c = ferry.conn()
    speeds = {"nginx (one file)": [], "ferry (ZIP)": []}
    hash_s, cpu_s, sizes = [], [], []
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for _ in range(DOWNLOAD_RUNS):
            speeds["nginx (one file)"].append(curl_speed(f"http://127.0.0.1:{bare.port}/one.bin")[0])
            t0 = time.perf_counter()
            link = ferry.create(c, "album")
            wait_hashed(ferry, link["tunnel_id"])
            hash_s.append(time.perf_counter() - t0)
            before = ferry.cpu_ticks()
            s, n = curl_speed(link["download_url"])
            cpu_s.append((ferry.cpu_ticks() - before) / tick)
            assert n == link["file_size"], (n, link["file_size"])
            sizes.append(n)
            speeds["ferry (ZIP)"].append(s)
        ferry.check_quiet()
    finally:
        bare.stop()
        ferry.stop()
    m, runs = runs_table("server", "GB/s", speeds, lambda x: f"{x / 1e9:.2f}")
    ratio = m["ferry (ZIP)"] / m["nginx (one file)"]
    gb = sizes[0] / 1e9
    results.append(("8. A 1 GiB ZIP of 100 files", runs
        + f"\n\nferry's ZIP / bare nginx's one file = **{ratio:.3f}** (target ≥ 0.7: {verdict(ratio >= 0.7)}). "
          f"From creation to a fully hashed archive: {median(hash_s) / gb:.2f} s per GB (median; "
          f"runs {' '.join(f'{x:.2f}' for x in hash_s)} s for {gb:.2f} GB). "
          f"ferry's CPU while serving: {median(cpu_s) / gb:.2f} s per GB (nginx's workers not counted)."))


def bench_upload(work, data):
    """9. One 1 GiB upload through an upload link, against nginx storing a PUT (DAV)."""
    src = os.path.join(work, "upload-source.bin")
    make_file(src, 1 << 30)
    inbox = os.path.join(data, "inbox")
    dav_root = os.path.join(work, "dav")
    os.makedirs(inbox, exist_ok=True)
    os.makedirs(dav_root, exist_ok=True)
    bare = DavNginx(work, dav_root)
    ferry = Ferry(os.path.join(work, "up"), data)
    c = ferry.conn()
    speeds = {"nginx (DAV PUT)": [], "ferry (upload link)": []}
    try:
        for i in range(DOWNLOAD_RUNS):
            # Each upload starts with nothing left to write out from the one before: the disk's
            # writeback of one would otherwise slow down the next.
            os.sync()
            speeds["nginx (DAV PUT)"].append(curl_put_speed(src, f"http://127.0.0.1:{bare.port}/run{i}.bin"))
            os.remove(os.path.join(dav_root, f"run{i}.bin"))
            os.sync()
            body = json.dumps({"folder": "inbox", "max_bytes": 2 << 30})
            c.request("POST", "/api/uploads", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            link = json.loads(r.read())
            speeds["ferry (upload link)"].append(curl_put_speed(src, link["upload_url"]))
            for name in os.listdir(inbox):
                os.remove(os.path.join(inbox, name))
        ferry.check_quiet()
    finally:
        bare.stop()
        ferry.stop()
    m, runs = runs_table("server", "GB/s", speeds, lambda x: f"{x / 1e9:.2f}")
    ratio = m["ferry (upload link)"] / m["nginx (DAV PUT)"]
    results.append(("9. One 1 GiB upload", runs
        + f"\n\nferry's upload link / nginx's DAV PUT = **{ratio:.3f}** (target ≥ 0.7: {verdict(ratio >= 0.7)}). "
          "ferry streams the body through nginx (no buffering), hashes it (SHA-256) as it is written, "
          "and syncs the file to disk before moving it into the folder; nginx's DAV module writes its "
          "temporary file and renames it, without a sync. Each upload starts after `sync`."))


def auth204(sock, *flags):
    """The trivial 204 check server (benches/auth204.rs), once it listens on `sock`."""
    # Its own process group: `cargo bench` runs the server as a child, which must go with it.
    srv = subprocess.Popen(["cargo", "bench", "-q", "--bench", "auth204", "--", sock, *flags], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not os.path.exists(sock):
        if time.time() > deadline or srv.poll() is not None:
            raise SystemExit("the auth204 baseline did not start")
        time.sleep(0.1)
    return srv


def bench_ranges(work, data):
    """2. 4 KiB ranges through one link, 64 connections, one client; the auth_request floor.
    Every path walks the file in distinct ranges (WALK_LUA), each ferry run on a fresh link."""
    # Sparse: room for every range a run asks for, without writing 4 GiB.
    path = os.path.join(data, "ranges.bin")
    if not os.path.exists(path) or os.path.getsize(path) != 4 << 30:
        with open(path, "wb") as f:
            f.truncate(4 << 30)
    walk = os.path.join(work, "walk.lua")
    with open(walk, "w") as f:
        f.write(WALK_LUA)
    sock = os.path.join(work, "auth204.sock")
    # The same trivial 204 with the three headers ferry's nginx config reads from ferry's check.
    sock_ferry = os.path.join(work, "auth204-ferry.sock")
    floor_srvs = []
    servers = []  # stopped at the end, whatever happens
    def started(server):
        servers.append(server)
        return server
    rng = ()
    own = "ferry's nginx config, check → 204"
    with_log = "auth_request → 204, nginx's default access log"
    with_json = "auth_request → 204, ferry's JSON access log"
    rates = {"bare nginx": [], "auth_request → 204": [], with_log: [], with_json: [], own: [], "ferry link": []}
    try:
        floor_srvs += [auth204(sock), auth204(sock_ferry, "--ferry")]
        bare = started(Nginx(work, data))
        floor = started(Nginx(work, data, auth_socket=sock))
        logged = started(Nginx(work, data, auth_socket=sock, default_log=True))
        # The floor with the access log SPEC §3 asks for: ferry's JSON line, in time-slotted files.
        json_logs = os.path.join(work, "json-logs")
        os.makedirs(json_logs)
        json_logged = started(Nginx(work, data, auth_socket=sock, log_dir=json_logs))
        ferry = started(Ferry(os.path.join(work, "ranges"), data))
        url = ferry.create(ferry.conn(), "ranges.bin", max_downloads=1)["download_url"]
        same = started(FerryNginx(work, ferry, sock_ferry))
        for _ in range(RUNS):
            rates["bare nginx"].append(wrk(f"http://127.0.0.1:{bare.port}/ranges.bin", 64, rng, script=walk))
            rates["auth_request → 204"].append(wrk(f"http://127.0.0.1:{floor.port}/ranges.bin", 64, rng, script=walk))
            rates[with_log].append(wrk(f"http://127.0.0.1:{logged.port}/ranges.bin", 64, rng, script=walk))
            os.truncate(os.path.join(logged.prefix, "access.log"), 0)
            rates[with_json].append(wrk(f"http://127.0.0.1:{json_logged.port}/ranges.bin", 64, rng, script=walk))
            for name in os.listdir(json_logs):
                os.truncate(os.path.join(json_logs, name), 0)
            rates[own].append(wrk(same.url(url), 64, rng, script=walk))
            same.clear_logs()
            url = ferry.create(ferry.conn(), "ranges.bin", max_downloads=1)["download_url"]
            rates["ferry link"].append(wrk(url, 64, rng, script=walk))
        for s in servers:
            s.check_quiet()
    finally:
        for s in servers:
            s.stop()
        for srv in floor_srvs:
            os.killpg(srv.pid, signal.SIGTERM)
            srv.wait(10)
    m, runs = runs_table("path", "req/s", rates, lambda x: f"{x:,.0f}")
    # The target: the floor with the access log SPEC §3 asks for (ferry's JSON line, time slots).
    r = m["ferry link"] / m[with_json]
    same_r = m[own]
    results.append(("2. 4 KiB range requests, 64 connections, one client", runs
        + f"\n\nferry / auth_request floor with SPEC §3's JSON access log = **{r:.3f}** "
          f"(target ≥ 0.8: {verdict(r >= 0.8)}); ferry / bare auth_request floor = "
          f"{m['ferry link'] / m['auth_request → 204']:.3f}; ferry / bare nginx = "
          f"{m['ferry link'] / m['bare nginx']:.3f}. Every path walks the file in distinct 4 KiB "
          "ranges (each wrk thread its own half): a link sends each byte of a download once.\n\n"
          f"The row \"{own}\" splits the gap: ferry's own nginx config (its JSON access log, "
          "`$request_id`, the per-client and per-link limits, the previewer maps, the check's headers) with the check "
          "answered by the same trivial 204 (carrying the rate, claim and disposition headers ferry's check sends) "
          f"runs at {same_r / m['auth_request → 204']:.3f} × the floor, "
          f"and ferry's real check at {m['ferry link'] / same_r:.3f} × that. For scale: the floor with "
          "nothing but nginx's default access log switched back on (the floor turns it off) runs at "
          f"{m[with_log] / m['auth_request → 204']:.3f} × the floor, and with the access log SPEC §3 asks for "
          "(ferry's JSON line with `$request_id`, in time-slotted files, nobody following it) at "
          f"{m[with_json] / m['auth_request → 204']:.3f}, and ferry's link at "
          f"{m['ferry link'] / m[with_json]:.3f} × that (its per-client and per-link `limit_conn` and "
          "`limit_req`, previewer maps and check headers in nginx, its check, and following the log, "
          "which section 3 allows to cost up to 15%)."))


class FerryNginx(Nginx):
    """ferry's own rendered nginx config, with the check answered by the trivial 204 server (with
    ferry's three answer headers, `auth204 --ferry`): what ferry's nginx costs without ferry's check.
    Its access log goes elsewhere (ferry does not read it)."""

    def __init__(self, work, ferry, auth_socket):
        self.port = free_port()
        self.prefix = os.path.join(work, f"ferry-nginx-{self.port}")
        self.logs = os.path.join(self.prefix, "logs")
        os.makedirs(self.logs, exist_ok=True)
        conf = open(os.path.join(ferry.work, "state", "nginx", "nginx.conf")).read()
        conf = conf.replace(f"listen 127.0.0.1:{ferry.public_port}", f"listen 127.0.0.1:{self.port}")
        conf = re.sub(r"\npid [^;]*;", f"\npid {self.prefix}/nginx.pid;", conf)
        conf = re.sub(r"server unix:[^;]*check\.sock;", f"server unix:{auth_socket};", conf)
        conf = conf.replace(ferry.env["FERRY_LOGS_DIR"] + "/", self.logs + "/")
        for needle in (f"listen 127.0.0.1:{self.port}", f"unix:{auth_socket}", self.logs):
            if needle not in conf:
                raise SystemExit(f"bench: ferry's nginx config changed shape ({needle} not placed)")
        self._run(conf)

    def url(self, link_url):
        return re.sub(r"^http://[^/]+", f"http://127.0.0.1:{self.port}", link_url)

    def clear_logs(self):
        # Emptied, not removed: nginx keeps the current slot's file open (O_APPEND) and logs a
        # failed stat() for a removed one.
        for name in os.listdir(self.logs):
            os.truncate(os.path.join(self.logs, name), 0)


def lag_histogram(ferry):
    _, text = ferry.get("/metrics")
    buckets = {}
    for line in text.decode().splitlines():
        m = re.match(r'ferry_monitor_lag_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
        if m:
            buckets[m.group(1)] = int(m.group(2))
    return buckets


def bench_monitor(work, data):
    """3. nginx's 4 KiB rate while ferry follows its access log, against nobody following it."""
    make_file(os.path.join(data, "small.bin"), 4096)
    logs = os.path.join(work, "monitor-logs")
    os.makedirs(logs, exist_ok=True)
    web = Nginx(work, data, log_dir=logs)
    rates = {"nobody follows": [], "ferry follows": []}
    lag = None
    crossed = 0  # runs during which the 10 s log slot changed
    try:
        for i in range(RUNS):
            for f in os.listdir(logs):
                os.remove(os.path.join(logs, f))
            rates["nobody follows"].append(wrk(f"http://127.0.0.1:{web.port}/small.bin", 64))
            for f in os.listdir(logs):
                os.remove(os.path.join(logs, f))
            ferry = Ferry(os.path.join(work, f"monitor-{i}"), data, FERRY_NGINX="external", FERRY_LOGS_DIR=logs,
                          FERRY_LOG_SLOT="10s")
            before = lag_histogram(ferry)
            started = time.time()
            rates["ferry follows"].append(wrk(f"http://127.0.0.1:{web.port}/small.bin", 64))
            crossed += int(started // 10) != int(time.time() // 10)
            time.sleep(1)
            after = lag_histogram(ferry)
            ferry.stop()
            h = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            lag = h if lag is None else {k: lag[k] + h[k] for k in h}
    finally:
        web.stop()
    m, runs = runs_table("nginx, 4 KiB GETs, JSON access log", "req/s", rates, lambda x: f"{x:,.0f}")
    r = m["ferry follows"] / m["nobody follows"]
    total = lag.get("+Inf", 0)
    within = {k: (v / total if total else 0) for k, v in lag.items()}
    p99 = next((k for k in sorted((k for k in within if k != "+Inf"), key=float) if within[k] >= 0.99), "> 5")
    results.append(("3. The monitor's cost", runs
        + f"\n\nwith ferry following / without = **{r:.3f}** (target ≥ 0.85: {verdict(r >= 0.85)}).\n\n"
          f"Monitor lag over {total:,} lines at ≥ {m['ferry follows']:,.0f} req/s (from ferry's "
          f"`ferry_monitor_lag_seconds` histogram): "
          + ", ".join(f"≤ {float(k) * 1000:g} ms: {within[k] * 100:.1f}%" for k in sorted(
              (k for k in within if k != "+Inf"), key=float))
          + f". p99 ≤ {float(p99) * 1000 if p99 != '> 5' else p99:g} ms "
            f"(target ≤ 50 ms: {verdict(p99 != '> 5' and float(p99) <= 0.05)}).\n\n"
            f"The log slot is 10 s here (100 s by default), so that runs cross slot changes: {crossed} of the "
            f"{RUNS} did. A slot's file is left 1.5 s after the next slot begins (a worker that read the clock "
            "just before the change may still write to it); meanwhile the next file is read too, so that its "
            "lines do not wait for the settling."))


def bench_close(work, data):
    """4. Last byte received → `closed` event (grace 0, local provider)."""
    make_file(os.path.join(data, "close.bin"), 256 << 10)
    ferry = Ferry(os.path.join(work, "close"), data, GRACE_PERIOD_SECONDS=0)
    closed = {}
    ready = threading.Event()

    def listen():
        c = ferry.conn()
        c.request("GET", "/admin/events")
        r = c.getresponse()
        ready.set()
        event = None
        while True:
            line = r.fp.readline()
            if not line:
                return
            line = line.decode().strip()
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "closed":
                closed[json.loads(line[5:])["tunnel"]["tunnel_id"]] = time.perf_counter()

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)
    c = ferry.conn()
    n = 50 if QUICK else 200
    lat = []
    for _ in range(n):
        link = ferry.create(c, "close.bin")
        u = urllib.parse.urlsplit(link["download_url"])
        d = http.client.HTTPConnection(u.hostname, u.port)
        d.request("GET", u.path + "?" + u.query)
        r = d.getresponse()
        body = r.read()
        t0 = time.perf_counter()
        assert r.status == 200 and len(body) == 256 << 10
        d.close()
        deadline = time.time() + 5
        while link["tunnel_id"] not in closed:
            if time.time() > deadline:
                raise SystemExit("a link did not close")
            time.sleep(0.0002)
        lat.append((closed[link["tunnel_id"]] - t0) * 1000)
    ferry.stop()
    p50, p99 = pct(lat, 50), pct(lat, 99)
    results.append(("4. Last byte served → link closed", table(
        ["downloads", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [[n, f"{p50:.2f}", f"{pct(lat, 90):.2f}", f"{p99:.2f}", f"{max(lat):.2f}"]])
        + f"\n\nMeasured from the client's last byte to the `closed` event on `/admin/events` (GRACE_PERIOD_SECONDS=0). "
          f"Targets p50 ≤ 5 ms: {verdict(p50 <= 5)}; p99 ≤ 50 ms: {verdict(p99 <= 50)}."))


CREATE_LUA = """
wrk.method = "POST"
wrk.body = '{"file_path":"create.bin"}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_latency(out):
    """wrk's --latency percentiles, in ms."""
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {int(p): float(v) * unit[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}


def bench_create(work, data, label, after_latency=lambda: None, **env):
    """5. Link creation through the API with wrk (a C client, so the client's own cost stays out
    of the figures) on a fresh ferry: latency with one connection, then throughput with CLIENTS
    (BENCH_CLIENTS)."""
    make_file(os.path.join(data, "create.bin"), 1024)
    script = os.path.join(work, "create.lua")
    with open(script, "w") as f:
        f.write(CREATE_LUA)
    ferry = Ferry(tempfile.mkdtemp(prefix=f"create-{label}-", dir=work), data, **env)
    url = f"http://127.0.0.1:{ferry.admin_port}/api/links"
    try:
        def run(conns):
            args = ["wrk", "-t1" if conns == 1 else "-t2", f"-c{conns}", f"-d{WRK_SECONDS}s", "--latency", "-s", script, url]
            out = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
            if (non2xx and int(non2xx.group(1)) > 0) or (errors and any(int(n) > 0 for n in errors.groups())):
                raise SystemExit(f"link creation failed under wrk:\n{out}")
            total = int(re.search(r"(\d+) requests in", out).group(1))
            return total, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), wrk_latency(out)
        n, _, lat = run(1)
        after_latency()
        more, rate, _ = run(CLIENTS)
    finally:
        ferry.stop()
    return n + more, lat, rate


def redis_cli(port, *args):
    """What redis-cli prints for one command to the bench's Redis."""
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def redis_stalls(port):
    """What Redis's latency monitor saw since it was last reset (and resets it): its slowest AOF
    fsync and other events, or that none went over the threshold."""
    words = redis_cli(port, "latency", "latest").split()
    redis_cli(port, "latency", "reset")
    # Four words an event: name, when, latest ms, max ms.
    events = [f"{words[i]} max {words[i + 3]} ms" for i in range(0, len(words) - 3, 4)]
    return ", ".join(events) or "none"


def redis_empty(port):
    """Empties Redis and rewrites its AOF, so that a run neither starts on the last one's links nor
    meets a rewrite Redis starts by itself as the file grows."""
    if redis_cli(port, "flushall") != "OK" or "rewriting" not in redis_cli(port, "bgrewriteaof"):
        raise SystemExit("could not empty Redis between runs")
    deadline = time.time() + 60
    while True:
        info = redis_cli(port, "info", "persistence")
        if "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info:
            return
        if time.time() > deadline:
            raise SystemExit("Redis did not finish rewriting its AOF")
        time.sleep(0.05)


def redis_floor(port):
    """What one durable write costs Redis itself on this disk, right after ferry's run on the same
    server and for about as long: `SET` from one connection, each answered after its fsync
    (`appendfsync always`). wrk corrects its percentiles for coordinated omission (one stall of
    100 ms among 5,000 requests of 1 ms adds a hundred late samples), redis-benchmark does not,
    so the stall shows here as the maximum."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-c", "1", "-n", "20000", "--csv"],
                         capture_output=True, text=True, timeout=300).stdout.splitlines()
    row = dict(zip(json.loads("[" + out[0] + "]"), json.loads("[" + out[-1] + "]")))
    ms = lambda k: float(row[k])
    return (f"Redis alone on the same AOF, one `SET` at a time (redis-benchmark, 20,000 requests): "
            f"p50 {ms('p50_latency_ms'):.2f} ms, p99 {ms('p99_latency_ms'):.2f} ms, max {ms('max_latency_ms'):.2f} ms "
            f"(its latency monitor: {redis_stalls(port)}). "
            "Every creation on Redis waits for one such fsync, so ferry's p99 follows the disk's; wrk's "
            "percentiles are corrected for coordinated omission, so one stall of the disk weighs on them "
            "far more than on redis-benchmark's.")


def bench_creation(work, data):
    rows = []
    notes = []
    variants = [("embedded", {}, 5)]
    redis = shutil.which("redis-server")
    if redis:
        variants.append(("redis", {"REDIS_URL": None, "JWT_SECRET": "b" * 40}, 3))
    for label, env, target in variants:
        srv = None
        if label == "redis":
            port = free_port()
            rdir = os.path.join(work, "redis")
            os.makedirs(rdir, exist_ok=True)
            srv = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--dir", rdir,
                                    "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                                    "--latency-monitor-threshold", "5"],
                                   stdout=subprocess.DEVNULL)
            wait_port(port)
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/"
        try:
            stalls = {"latency": [], "throughput": []}
            runs = []  # (links, latency percentiles, links/s), a fresh ferry (and an empty Redis) each
            for _ in range(RUNS):
                if srv:
                    redis_empty(port)
                    redis_stalls(port)
                runs.append(bench_create(work, data, label,
                                         lambda: srv and stalls["latency"].append(redis_stalls(port)), **env))
                if srv:
                    stalls["throughput"].append(redis_stalls(port))
            if srv:
                notes.append("Redis's own latency monitor (events over 5 ms) during ferry's latency runs: "
                             f"{'; '.join(stalls['latency'])}; during its throughput runs: "
                             f"{'; '.join(stalls['throughput'])}.")
                notes.append(redis_floor(port))
        except SystemExit as e:
            notes.append(f"{label}: not measured ({e})")
            continue
        finally:
            if srv:
                srv.terminate()
                srv.wait(30)
        p50 = median([lat[50] for _, lat, _ in runs])
        p99s = [lat[99] for _, lat, _ in runs]
        p99 = median(p99s)
        rate = median([r for _, _, r in runs])
        rows.append([label, f"{sum(n for n, _, _ in runs):,}", f"{p50:.2f}", f"{p99:.2f}",
                     " ".join(f"{x:.2f}" for x in p99s), f"{rate:,.0f}",
                     " ".join(f"{r:,.0f}" for _, _, r in runs),
                     f"p99 ≤ {target} ms: {verdict(p99 <= target)}; ≥ 2,000/s: {verdict(rate >= 2000)}"])
    results.append(("5. Link creation", table(
        ["store", "links", "p50 ms", "p99 ms", "p99 runs", f"links/s ({CLIENTS} clients)", "links/s runs",
         "targets"], rows)
        + f"\n\n`POST /api/links` from wrk, {RUNS} runs a store, each on a fresh ferry (and an emptied Redis, its AOF rewritten): "
          f"one keep-alive connection for {WRK_SECONDS} s for latency (wrk's percentiles), then {CLIENTS} "
          "connections for throughput (BENCH_CLIENTS); medians of the runs. Every link is created "
          "for real: stored durably, symlinked, opened with the provider." + ("\n\n" + "\n".join(notes) if notes else "")))


def bench_scale(work, data):
    """6. 10,000 open links: memory, listing, restart; idle memory and CPU."""
    make_file(os.path.join(data, "scale.bin"), 1024)
    ferry = Ferry(os.path.join(work, "scale"), data)
    time.sleep(2)
    idle_rss = ferry.rss_kb() / 1024
    t0 = ferry.cpu_ticks()
    time.sleep(10)
    idle_cpu = (ferry.cpu_ticks() - t0) / os.sysconf("SC_CLK_TCK") / 10 * 100
    n = 2000 if QUICK else 10000
    conns = [ferry.conn() for _ in range(4)]

    def make(i):
        for _ in range(n // 4):
            ferry.create(conns[i], "scale.bin")

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss = ferry.rss_kb() / 1024
    lists = []
    c = ferry.conn()
    for _ in range(RUNS):
        t0 = time.perf_counter()
        c.request("GET", "/admin/tunnels")
        r = c.getresponse()
        body = r.read()
        lists.append((time.perf_counter() - t0) * 1000)
    count = len(json.loads(body)["tunnels"])
    assert count == n, count
    ferry.stop()
    ferry.start()
    restart = ferry.started_in
    ferry.stop()
    rows = [
        ["idle RSS (no links)", f"{idle_rss:.1f} MB", "≤ 20 MB", verdict(idle_rss <= 20)],
        ["idle CPU over 10 s", f"{idle_cpu:.2f}%", "none measurable", verdict(idle_cpu < 0.5)],
        [f"RSS with {n:,} open links", f"{rss:.1f} MB", "≤ 150 MB", verdict(rss <= 150)],
        [f"`GET /admin/tunnels` ({n:,} links, median of {RUNS})", f"{median(lists):.1f} ms", "≤ 100 ms",
         verdict(median(lists) <= 100)],
        [f"restart to serving, reconciled ({n:,} links)", f"{restart * 1000:.0f} ms", "≤ 2 s", verdict(restart <= 2)],
    ]
    results.append(("6. Scale", table(["what", "measured", "target", ""], rows)
                    + "\n\nRSS is ferry's own process (nginx is a separate process). Restart is SIGTERM, then "
                      "`ferry serve` until `/health` answers 200: the store is opened and every link reconciled "
                      "(symlinks, deadlines) before the admin listener serves."))


def bench_reliability(work, data):
    """7. The reliability suite's figures (tests/it/reliability.rs) and a fuzzing run, in this run."""
    t0 = time.time()
    run = subprocess.run(["cargo", "test", "--locked", "--test", "it", "reliability::", "--",
                          "--nocapture", "--test-threads=1"], cwd=ROOT, capture_output=True, text=True)
    took = time.time() - t0
    if run.returncode != 0:
        raise SystemExit("the reliability suite failed:\n" + (run.stdout + run.stderr)[-4000:])
    figures = [line.strip() for line in run.stderr.splitlines()
               if re.match(r"^(1000 links|300 links)", line.strip())]
    passed = re.search(r"test result: ok\. (\d+) passed", run.stdout)
    seconds = 10 if QUICK else 30
    fuzz = subprocess.run([os.path.join(ROOT, "script", "fuzz"), str(seconds)], cwd=ROOT,
                          capture_output=True, text=True)
    if fuzz.returncode != 0:
        raise SystemExit("a fuzz target failed:\n" + fuzz.stderr[-4000:])
    rows = []
    for line in fuzz.stderr.splitlines():
        m = re.match(r"^(\w+)\s+(\d+) s\s+(\d+) inputs\s+(\d+) corpus\s+ok$", line)
        if m:
            rows.append([f"`{m.group(1)}`", f"{m.group(2)} s", f"{int(m.group(3)):,}", m.group(4), "no crash"])
    results.append(("7. Reliability", f"`cargo test --test it reliability::` ({passed.group(1) if passed else '?'} "
                    f"tests, all passed, {took:.0f} s with the build):\n\n"
                    + "\n".join(f"- {f}" for f in figures)
                    + "\n\nThe full log disk test (444 for new claims while nginx cannot write its log, "
                      "service again once there is room) is in the same suite. "
                      f"Fuzzing, `script/fuzz {seconds}` (libFuzzer, every parser target):\n\n"
                    + table(["target", "time", "inputs tried", "corpus", "result"], rows)))


def machine():
    cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    mem = int(re.search(r"MemTotal:\s+(\d+)", open("/proc/meminfo").read()).group(1)) // 1024 // 1024
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return (f"{os.cpu_count()} cores ({cpu.group(1) if cpu else 'unknown CPU'}), {mem} GiB, "
            f"{os.uname().sysname} {os.uname().release}; {nginx_v}; "
            f"{subprocess.run(['rustc', '--version'], capture_output=True, text=True).stdout.strip()}")


def main():
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "--benches"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="ferry-bench-")
    os.chmod(work, 0o755)  # nginx started as root serves as `nobody`
    data = os.path.join(work, "data")
    os.makedirs(data)
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    steps = [("download", bench_download), ("ranges", bench_ranges), ("monitor", bench_monitor),
             ("close", bench_close), ("create", bench_creation), ("scale", bench_scale),
             ("reliability", bench_reliability), ("zip", bench_zip),
             ("upload", bench_upload)]
    unknown = [a for a in only if a not in dict(steps)]
    if unknown:
        raise SystemExit(f"bench: no part named {', '.join(unknown)}; the parts: {' '.join(n for n, _ in steps)}")
    started = datetime.now(timezone.utc)
    try:
        for name, step in steps:
            if only and name not in only:
                continue
            print(f"bench: {name}", flush=True)
            step(work, data)
            print(results[-1][1] + "\n", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if only:
        return
    path = os.path.join(ROOT, "BENCHMARKS.md")
    # The design notes are written by hand: a new run keeps them as they are.
    notes = ""
    if os.path.exists(path):
        old = open(path).read()
        at = old.find(NOTES_HEADING)
        notes = old[at:] if at >= 0 else ""
    with open(path, "w") as f:
        f.write("# Benchmarks\n\n")
        f.write(f"Measured {started:%Y-%m-%d %H:%M} UTC by `script/bench{' --quick' if QUICK else ''}` on "
                f"{machine()}.\n\n")
        f.write("Each comparison runs its variants interleaved in one run and gives medians of "
                f"{RUNS} runs ({DOWNLOAD_RUNS} for the download); ratios are the result, absolute figures are context (these machines are "
                "noisy). Files are read into the page cache first. wrk runs 2 threads for "
                f"{WRK_SECONDS} s a run. Everything is on loopback, so the client shares the 2 cores "
                "with the servers.\n\n")
        for title, body in results:
            f.write(f"## {title}\n\n{body}\n\n")
        f.write(notes)
    print("wrote BENCHMARKS.md")


NOTES_HEADING = "## Design notes behind the figures"


if __name__ == "__main__":
    main()
