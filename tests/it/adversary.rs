//! The bound of SPEC §2 against adversarial clients, on real nginx and ferry: whatever any set of
//! clients does (User-Agents of any bytes, several addresses, pieces around the preview size,
//! aborts, pauses around the resume window, grace re-fetches, parallel requests), a link hands out
//! at most `max_downloads` × size + the re-send budget + the reads' cap + the grace allowance of
//! body bytes, at most `max_downloads` downloads complete, and a client holding every byte has
//! completed one.
//!
//! A seeded generator drives sessions (one fresh link each) for `FERRY_ADVERSARY_SECONDS`
//! (default 120); `FERRY_ADVERSARY_SEED` replays a run, `FERRY_ADVERSARY_SESSION` one session of
//! it. Then one deterministic test per known way around the bound.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::wire::{Ask, Cover, Got, fetch, fetch_keep, show, split_url};

/// xorshift64* seeded through splitmix64: small, and the same numbers for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.next() as usize % xs.len()]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The sizes a link's bound depends on.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    preview: u64,
    grace: u64,
    refetch: u64,
}

impl Sizes {
    /// SPEC §2's bound on the body bytes one link hands out.
    fn bound(&self, size: u64, max_downloads: u64) -> u64 {
        max_downloads * size
            + self.refetch * max_downloads
            + (8 * self.preview).min(size / 2)
            + self.grace.min(size.saturating_sub(1))
    }
}

const PREVIEWER: &[u8] = b"Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)";

/// User-Agents: ASCII, UTF-8, raw bytes >= 0x80, a tab, control bytes, empty, none, a previewer.
const AGENTS: &[Option<&[u8]>] = &[
    Some(b"Mozilla/5.0 (X11; Linux x86_64) adversary/1"),
    Some("café".as_bytes()),
    Some("naïve 🚀 télécharge".as_bytes()),
    Some(b"\xff\xfe"),
    Some(b"raw \x80\x81\xc3 bytes"),
    Some(b"with\ttab"),
    Some(b"ctl\x01\x02\x1b[31m\x7f"),
    Some(b""),
    None,
    Some(PREVIEWER),
];

fn previewer(ua: Option<&[u8]>) -> bool {
    ua.is_some_and(|u| u.windows(22).any(|w| w == b"Slackbot-LinkExpanding"))
}

/// Which bytes a request asks for.
#[derive(Clone, Copy, Debug)]
enum Span {
    Whole,
    Closed(u64, u64),
    Open(u64),
    Suffix(u64),
    /// `len` bytes from the first byte the client does not hold yet.
    Missing(u64),
}

#[derive(Clone, Debug)]
enum Step {
    Get {
        span: Span,
        wrong_if_range: bool,
        abort: Option<u64>,
    },
    Head,
    Pause(u64),
    /// `n` consecutive pieces from the first missing byte, at once, each maybe hung up early.
    Parallel {
        n: u64,
        piece: u64,
        abort: Option<u64>,
    },
    /// Pieces from the first missing byte to the end, one after the other.
    Walk {
        piece: u64,
        gap_ms: u64,
        max: usize,
    },
    /// `Range: bytes=0-` again after a wait: what a client asks for in the grace period.
    Refetch {
        wait_ms: u64,
        times: usize,
    },
}

#[derive(Clone, Debug)]
struct Actor {
    addr: Ipv4Addr,
    ua: Option<Vec<u8>>,
    steps: Vec<Step>,
}

#[derive(Clone, Debug)]
struct Plan {
    size: u64,
    max_downloads: u64,
    actors: Vec<Actor>,
}

fn plan(rng: &mut Rng, s: Sizes, resume_ms: u64) -> Plan {
    let p = s.preview;
    let size = match rng.between(0, 4) {
        0 => rng.between(4096, p - 1),
        1 => rng.between(p - 2, p + 2),
        2 => rng.between(p, 2 * p),
        3 => rng.between(2 * p, 1 << 20),
        _ => rng.between(1 << 20, 3 << 20),
    };
    let max_downloads = rng.between(1, 3);
    let actors = (0..rng.between(1, 4))
        .map(|_| {
            let steps = (0..rng.between(1, 6)).map(|_| step(rng, size, p, resume_ms)).collect();
            Actor {
                addr: Ipv4Addr::new(127, 0, 0, rng.between(1, 4) as u8),
                ua: rng.pick(AGENTS).map(|u| u.to_vec()),
                steps,
            }
        })
        .collect();
    Plan {
        size,
        max_downloads,
        actors,
    }
}

fn piece(rng: &mut Rng, size: u64, p: u64) -> u64 {
    let x = match rng.between(0, 6) {
        0 => p - 1,
        1 => p,
        2 => p + 1,
        3 => rng.between(1, 4096),
        4 => p / 2 - 1,
        5 => size / 2,
        _ => rng.between(1, size),
    };
    x.max(1)
}

fn step(rng: &mut Rng, size: u64, p: u64, resume_ms: u64) -> Step {
    let abort = |rng: &mut Rng, len: u64| rng.chance(30).then(|| rng.between(0, len.min(size)));
    match rng.between(0, 11) {
        0 | 1 => Step::Get {
            span: Span::Whole,
            wrong_if_range: false,
            abort: abort(rng, size),
        },
        2 => {
            let len = piece(rng, size, p);
            let a = rng.between(0, size - 1);
            Step::Get {
                span: Span::Closed(a, a + len - 1),
                wrong_if_range: false,
                abort: abort(rng, len),
            }
        }
        3 => Step::Get {
            span: Span::Open(rng.between(0, size - 1)),
            wrong_if_range: rng.chance(20),
            abort: abort(rng, size),
        },
        4 => Step::Get {
            span: Span::Suffix(piece(rng, size, p)),
            wrong_if_range: false,
            abort: None,
        },
        5 | 6 => {
            let len = piece(rng, size, p);
            Step::Get {
                span: Span::Missing(len),
                wrong_if_range: rng.chance(15),
                abort: abort(rng, len),
            }
        }
        7 => Step::Head,
        8 => Step::Pause(rng.pick(&[100, 500, resume_ms - 300, resume_ms + 300])),
        9 => {
            let piece = piece(rng, size, p);
            Step::Parallel {
                n: rng.between(2, 4),
                piece,
                abort: abort(rng, piece),
            }
        }
        10 => Step::Walk {
            piece: piece(rng, size, p).max(size / 12),
            gap_ms: rng.pick(&[0, 200, 500, resume_ms - 300]),
            max: 12,
        },
        _ => Step::Refetch {
            wait_ms: rng.pick(&[0, 500, 1500]),
            times: rng.between(1, 3) as usize,
        },
    }
}

/// One session's shared record: what every client received, and the trace.
struct Tally {
    t0: Instant,
    trace: Vec<String>,
    requests: usize,
    file_bytes: u64,
    page_bytes: u64,
    covers: Vec<Cover>,
    whole_copies: usize,
    problems: Vec<String>,
}

struct Ctx {
    public: SocketAddr,
    target: String,
    file: Vec<u8>,
    tally: Mutex<Tally>,
}

impl Ctx {
    fn new(public: SocketAddr, target: String, file: Vec<u8>, clients: usize) -> Ctx {
        Ctx {
            public,
            target,
            file,
            tally: Mutex::new(Tally {
                t0: Instant::now(),
                trace: vec![],
                requests: 0,
                file_bytes: 0,
                page_bytes: 0,
                covers: vec![Cover::default(); clients],
                whole_copies: 0,
                problems: vec![],
            }),
        }
    }

    fn size(&self) -> u64 {
        self.file.len() as u64
    }

    fn first_missing(&self, who: usize) -> Option<u64> {
        self.tally.lock().unwrap().covers[who].first_missing(self.size())
    }

    /// Sends one request as client `who` and records what it received.
    async fn ask(&self, who: usize, actor: &Actor, ask: Ask) -> Got {
        let ua = actor.ua.as_deref();
        let got = fetch(self.public, actor.addr, &self.target, ua, &ask).await;
        self.record(who, actor, &ask, &got);
        got
    }

    fn record(&self, who: usize, actor: &Actor, ask: &Ask, got: &Got) {
        let ua = actor.ua.as_deref();
        let mut t = self.tally.lock().unwrap();
        t.requests += 1;
        let file = got.file_bytes(previewer(ua));
        let at = t.t0.elapsed().as_millis();
        t.trace.push(format!(
            "{at:>6} ms  client {who} {} UA {}: {} -> {}",
            actor.addr,
            show(ua),
            ask.describe(),
            got.describe()
        ));
        if file == 0 {
            if matches!(got.status, 200 | 206) {
                t.page_bytes += got.body.len() as u64;
            }
            return;
        }
        let (start, end) = (got.start, got.start + file);
        if end > self.size() || got.body[..] != self.file[start as usize..end as usize] {
            t.problems.push(format!(
                "client {who} received bytes that are not the file's at {start}..{end}"
            ));
        }
        t.file_bytes += file;
        t.covers[who].add(start, file);
        if start == 0 && file == self.size() {
            t.whole_copies += 1;
        }
    }

    fn range(&self, who: usize, span: Span) -> Option<String> {
        let size = self.size();
        match span {
            Span::Whole => None,
            Span::Closed(a, b) => Some(format!("bytes={a}-{b}")),
            Span::Open(a) => Some(format!("bytes={a}-")),
            Span::Suffix(n) => Some(format!("bytes=-{n}")),
            Span::Missing(len) => {
                let a = self.first_missing(who).unwrap_or(0);
                Some(format!("bytes={a}-{}", (a + len - 1).min(size - 1)))
            }
        }
    }
}

async fn act(ctx: Arc<Ctx>, who: usize, actor: Actor) {
    for step in actor.steps.clone() {
        match step {
            Step::Get {
                span,
                wrong_if_range,
                abort,
            } => {
                let range = ctx.range(who, span);
                let if_range = (wrong_if_range && range.is_some()).then(|| "\"0-0\"".to_string());
                let ask = Ask {
                    range,
                    if_range,
                    abort_after: abort,
                    ..Ask::default()
                };
                ctx.ask(who, &actor, ask).await;
            }
            Step::Head => {
                let ask = Ask {
                    head: true,
                    ..Ask::default()
                };
                ctx.ask(who, &actor, ask).await;
            }
            Step::Pause(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Parallel { n, piece, abort } => parallel(&ctx, who, &actor, n, piece, abort).await,
            Step::Walk { piece, gap_ms, max } => walk(&ctx, who, &actor, piece, gap_ms, max).await,
            Step::Refetch { wait_ms, times } => {
                for _ in 0..times {
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    ctx.ask(who, &actor, Ask::range("bytes=0-")).await;
                }
            }
        }
    }
}

/// `n` pieces of `piece` bytes at once from the first byte `who` lacks; all but the first may
/// hang up after `abort` bytes.
async fn parallel(ctx: &Arc<Ctx>, who: usize, actor: &Actor, n: u64, piece: u64, abort: Option<u64>) {
    let a = ctx.first_missing(who).unwrap_or(0);
    let size = ctx.size();
    let asks: Vec<_> = (0..n)
        .map(|k| a + k * piece)
        .filter(|&s| s < size)
        .enumerate()
        .map(|(k, s)| {
            let (ctx, actor) = (ctx.clone(), actor.clone());
            let e = (s + piece - 1).min(size - 1);
            // The first piece runs whole; the others may hang up.
            let abort = if k == 0 { None } else { abort };
            tokio::spawn(async move {
                let ask = Ask {
                    range: Some(format!("bytes={s}-{e}")),
                    abort_after: abort,
                    ..Ask::default()
                };
                ctx.ask(who, &actor, ask).await;
            })
        })
        .collect();
    for a in asks {
        a.await.unwrap();
    }
}

/// Up to `max` pieces of `piece` bytes one after another, each from the first byte `who` lacks,
/// `gap_ms` apart; stops after two refusals.
async fn walk(ctx: &Ctx, who: usize, actor: &Actor, piece: u64, gap_ms: u64, max: usize) {
    let mut refused = 0;
    for _ in 0..max {
        let Some(a) = ctx.first_missing(who) else { break };
        let e = (a + piece - 1).min(ctx.size() - 1);
        let got = ctx.ask(who, actor, Ask::range(format!("bytes={a}-{e}"))).await;
        if got.body.is_empty() {
            refused += 1;
            if refused == 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
    }
}

/// Waits (at most `within`) until ferry has no request of the link in flight and has read the
/// log lines of those that ended; returns `downloads_completed` as ferry then sees it.
async fn settle(app: &TestApp, id: &str, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut quiet = 0;
    loop {
        let (status, v) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
        let busy = status == 200
            && v["requests"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["in_flight"] == true));
        quiet = if busy { 0 } else { quiet + 1 };
        if quiet >= 5 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    completed(app, id).await
}

async fn completed(app: &TestApp, id: &str) -> u64 {
    let (status, v) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
    let open = if status == 200 {
        v["tunnel"]["downloads_completed"].as_u64().unwrap_or(0)
    } else {
        0
    };
    let closed = app
        .history()
        .await
        .into_iter()
        .find(|t| t["tunnel_id"] == id)
        .and_then(|t| t["downloads_completed"].as_u64())
        .unwrap_or(0);
    open.max(closed)
}

struct Outcome {
    requests: usize,
    violations: Vec<String>,
    report: String,
}

async fn session(app: &TestApp, sizes: Sizes, resume_ms: u64, seed: u64, index: u64) -> Outcome {
    let mut rng = Rng::new(seed ^ index.wrapping_mul(0xA24B_AED4_963E_E407));
    let p = plan(&mut rng, sizes, resume_ms);
    let name = format!("s{index}.bin");
    let file = rng.bytes(p.size as usize);
    std::fs::write(app.path("data").join(&name), &file).unwrap();
    let (status, link) = app
        .create(json!({"file_path": name, "max_downloads": p.max_downloads}))
        .await;
    assert_eq!(status, 201, "{link}");
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    let (public, target) = split_url(link["download_url"].as_str().unwrap());
    let ctx = Arc::new(Ctx::new(public, target, file, p.actors.len()));

    let tasks: Vec<_> = p
        .actors
        .iter()
        .cloned()
        .enumerate()
        .map(|(who, actor)| tokio::spawn(act(ctx.clone(), who, actor)))
        .collect();
    let all = futures_join(tasks);
    let timed_out = tokio::time::timeout(Duration::from_secs(90), all).await.is_err();
    let done = settle(app, &id, Duration::from_secs(8)).await;

    let verdict = Verdict {
        plan: &p,
        sizes,
        done,
        timed_out,
        index,
        seed,
        id: &id,
    };
    let (requests, violations, report) = verdict.judge(&ctx.tally.lock().unwrap());
    app.terminate(&id).await;
    let _ = std::fs::remove_file(app.path("data").join(&name));
    Outcome {
        requests,
        violations,
        report,
    }
}

/// What a session's figures say against SPEC §2.
struct Verdict<'a> {
    plan: &'a Plan,
    sizes: Sizes,
    done: u64,
    timed_out: bool,
    index: u64,
    seed: u64,
    id: &'a str,
}

impl Verdict<'_> {
    /// (requests, violations, report with the whole trace).
    fn judge(&self, t: &Tally) -> (usize, Vec<String>, String) {
        let (p, sizes, done, timed_out, index, seed, id) = (
            self.plan,
            self.sizes,
            self.done,
            self.timed_out,
            self.index,
            self.seed,
            self.id,
        );
        let bound = sizes.bound(p.size, p.max_downloads);
        let mut violations = t.problems.clone();
        if timed_out {
            violations.push("the session's clients did not finish within 90 s".into());
        }
        if t.file_bytes > bound {
            violations.push(format!(
                "the bound: clients received {} body bytes of the file, bound {bound} ({} over)",
                t.file_bytes,
                t.file_bytes - bound
            ));
        }
        if done > p.max_downloads {
            violations.push(format!(
                "{done} downloads completed on a link allowing {}",
                p.max_downloads
            ));
        }
        let holders: Vec<usize> = (0..t.covers.len()).filter(|&c| t.covers[c].whole(p.size)).collect();
        if !holders.is_empty() && done == 0 {
            violations.push(format!(
                "client(s) {holders:?} hold every byte but ferry counts no completed download"
            ));
        }
        let clients: Vec<String> = p
            .actors
            .iter()
            .enumerate()
            .map(|(k, a)| {
                format!(
                    "  client {k}: {} UA {}, holds {} of {} bytes, steps {:?}",
                    a.addr,
                    show(a.ua.as_deref()),
                    t.covers[k].held(),
                    p.size,
                    a.steps
                )
            })
            .collect();
        let report = format!(
            "session {index} (seed {seed}): link {id}, size {}, max_downloads {}, {} client(s); received {} file \
             bytes (bound {bound}), {} previewer page bytes, {} whole copies in one response, {done} downloads \
             completed\n{}\n  trace:\n    {}",
            p.size,
            p.max_downloads,
            p.actors.len(),
            t.file_bytes,
            t.page_bytes,
            t.whole_copies,
            clients.join("\n"),
            t.trace.join("\n    ")
        );
        (t.requests, violations, report)
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        t.await.unwrap();
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn no_strategy_of_any_set_of_clients_gets_more_than_the_bound() {
    let sizes = Sizes {
        preview: 262_144,
        grace: 524_288,
        refetch: 1_048_576,
    };
    let resume_ms = 2000;
    let app = TestApp::spawn_with(&[
        ("RESUME_WINDOW_SECONDS", "2"),
        ("GRACE_PERIOD_SECONDS", "2"),
        ("FERRY_PREVIEW_BYTES", "262144"),
        ("FERRY_GRACE_BYTES", "524288"),
        ("FERRY_REFETCH_BYTES", "1048576"),
        ("STALL_TIMEOUT_SECONDS", "3600"),
        ("FERRY_LOG", "info"),
    ])
    .await;
    let seed = env_u64("FERRY_ADVERSARY_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let budget = Duration::from_secs(env_u64("FERRY_ADVERSARY_SECONDS").unwrap_or(120));
    let only = env_u64("FERRY_ADVERSARY_SESSION");
    println!("adversary: seed {seed} (FERRY_ADVERSARY_SEED={seed} replays it), budget {budget:?}");

    let start = Instant::now();
    let (mut sessions, mut requests) = (0u64, 0usize);
    let mut failed: Vec<(u64, Vec<String>, String)> = vec![];
    let indices: Vec<u64> = match only {
        Some(k) => vec![k],
        None => (0..2000).collect(),
    };
    for index in indices {
        if start.elapsed() >= budget && sessions > 0 {
            break;
        }
        let o = session(&app, sizes, resume_ms, seed, index).await;
        sessions += 1;
        requests += o.requests;
        if !o.violations.is_empty() {
            println!(
                "VIOLATION in {}:\n  {}\n{}\n",
                index,
                o.violations.join("\n  "),
                o.report
            );
            failed.push((index, o.violations, o.report));
        }
    }
    println!(
        "adversary: {sessions} sessions, {requests} requests, {} with violations, seed {seed}, {:?}",
        failed.len(),
        start.elapsed()
    );
    if let Some((index, v, report)) = failed.first() {
        let kinds: Vec<String> = failed
            .iter()
            .map(|(i, v, _)| format!("session {i}: {}", v.join("; ")))
            .collect();
        panic!(
            "the bound was broken in {} of {sessions} sessions ({requests} requests), seed {seed}; replay one with \
             FERRY_ADVERSARY_SEED={seed} FERRY_ADVERSARY_SESSION={index}\n{}\n\nfirst: {}\n{report}",
            failed.len(),
            kinds.join("\n"),
            v.join("; ")
        );
    }
}

/// Whole GETs as one client, `gap` apart; returns (whole copies received, file bytes received).
async fn whole_gets(url: &str, ua: &[u8], times: usize, gap: Duration, size: u64) -> (usize, u64, Vec<String>) {
    let (public, target) = split_url(url);
    let (mut copies, mut bytes, mut trace) = (0, 0, vec![]);
    for k in 0..times {
        if k > 0 {
            tokio::time::sleep(gap).await;
        }
        let got = fetch(public, Ipv4Addr::LOCALHOST, &target, Some(ua), &Ask::get()).await;
        trace.push(format!("GET #{k} -> {}", got.describe()));
        bytes += got.file_bytes(false);
        if got.status == 200 && got.body.len() as u64 == size {
            copies += 1;
        }
    }
    (copies, bytes, trace)
}

/// A non-ASCII User-Agent is one client like any other: its downloads are counted, so whole
/// GETs stop after the allowance.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_ascii_user_agent_gets_no_more_copies_than_the_allowance() {
    let app = TestApp::spawn_with(&[("RESUME_WINDOW_SECONDS", "1")]).await;
    let size = 3_000_000u64;
    app.data_file("cafe.bin", size as usize);
    app.data_file("raw.bin", size as usize + 1);

    let (status, two) = app.create(json!({"file_path": "cafe.bin", "max_downloads": 2})).await;
    assert_eq!(status, 201, "{two}");
    let (status, one) = app.create(json!({"file_path": "raw.bin"})).await;
    assert_eq!(status, 201, "{one}");
    let url = |v: &Value| v["download_url"].as_str().unwrap().to_string();

    let cafe = "café".as_bytes();
    let (two_copies, two_bytes, two_trace) = whole_gets(&url(&two), cafe, 5, Duration::from_secs(3), size).await;
    let (one_copies, one_bytes, one_trace) = whole_gets(&url(&one), b"\xff", 3, Duration::from_secs(3), size + 1).await;
    assert!(
        two_copies <= 2 && one_copies <= 1,
        "User-Agent café: {two_copies} whole copies ({two_bytes} bytes) from a max_downloads 2 link of {size} \
         bytes:\n{}\nUser-Agent \\xff: {one_copies} whole copies ({one_bytes} bytes) from a single-use link of {} \
         bytes:\n{}",
        two_trace.join("\n"),
        size + 1,
        one_trace.join("\n")
    );
}

/// Pieces just below the preview size are reads only while the address has read less than the
/// preview size: walking the file in such pieces needs a claim, and the allowance holds.
#[tokio::test(flavor = "multi_thread")]
async fn pieces_just_below_the_preview_size_assemble_no_more_than_the_allowance() {
    let sizes = Sizes {
        preview: 1 << 20,
        grace: 1 << 20,
        refetch: 1 << 20,
    };
    let app = TestApp::spawn_with(&[
        ("RESUME_WINDOW_SECONDS", "1"),
        ("FERRY_GRACE_BYTES", "1048576"),
        ("FERRY_REFETCH_BYTES", "1048576"),
    ])
    .await;
    let size = 3u64 << 20;
    let file = app.data_file("pieces.bin", size as usize);
    let (status, link) = app.create(json!({"file_path": "pieces.bin", "max_downloads": 2})).await;
    assert_eq!(status, 201, "{link}");
    let id = link["tunnel_id"].as_str().unwrap();
    let (public, target) = split_url(link["download_url"].as_str().unwrap());
    let piece = sizes.preview - 1;
    let ua: &[u8] = b"Mozilla/5.0 pieces";

    let (mut copies, mut bytes, mut trace) = (0, 0u64, vec![]);
    for walk in 0..3 {
        let mut cover = Cover::default();
        let mut a = 0;
        while a < size {
            let e = (a + piece - 1).min(size - 1);
            let got = fetch(
                public,
                Ipv4Addr::LOCALHOST,
                &target,
                Some(ua),
                &Ask::range(format!("bytes={a}-{e}")),
            )
            .await;
            trace.push(format!("walk {walk} bytes={a}-{e} -> {}", got.describe()));
            let n = got.file_bytes(false);
            if n > 0 {
                assert!(got.body[..] == file[got.start as usize..(got.start + n) as usize]);
                cover.add(got.start, n);
            }
            bytes += n;
            a = e + 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if cover.whole(size) {
            copies += 1;
        }
    }
    let done = settle(&app, id, Duration::from_secs(5)).await;
    let bound = sizes.bound(size, 2);
    assert!(
        copies <= 2 && bytes <= bound && done <= 2,
        "pieces of {piece} bytes: {copies} copies assembled, {bytes} bytes received (bound {bound}), {done} \
         downloads completed, from a max_downloads 2 link of {size} bytes:\n{}",
        trace.join("\n")
    );
}

/// aria2c's way: a whole-file GET that is hung up once the other connections' ranges have the
/// rest. While the whole GET may still send a range, asking for it again would send it twice:
/// past the re-send budget that request is refused, and (as aria2c does) asked again once the
/// whole GET has hung up. The client holds every byte, so the link completes, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_whole_get_hung_up_while_ranges_fetch_the_rest_completes_once() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    // Larger than loopback's socket buffers: the hung-up GET really is cut short.
    let size = 32_000_000u64;
    let file = app.data_file("split.bin", size as usize);
    let link = app.link("split.bin").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let (public, target) = split_url(link["download_url"].as_str().unwrap());
    let ua: &[u8] = b"aria2/1.36.0";
    let quarter = size / 4;

    let mut cover = Cover::default();
    let mut trace = vec![];
    let first = Ask {
        abort_after: Some(quarter),
        ..Ask::get()
    };
    let (held, got) = fetch_keep(public, Ipv4Addr::LOCALHOST, &target, Some(ua), &first).await;
    trace.push(format!("{} -> {}", first.describe(), got.describe()));
    assert_eq!(got.status, 200, "{}", trace.join("\n"));
    cover.add(0, got.body.len() as u64);
    let ranges: Vec<_> = (1..4)
        .map(|k| {
            let (a, e) = (k * quarter, if k == 3 { size - 1 } else { (k + 1) * quarter - 1 });
            let target = target.clone();
            tokio::spawn(async move {
                let ask = Ask::range(format!("bytes={a}-{e}"));
                let got = fetch(public, Ipv4Addr::LOCALHOST, &target, Some(ua), &ask).await;
                (ask, got)
            })
        })
        .collect();
    let mut refused = vec![];
    for r in ranges {
        let (ask, got) = r.await.unwrap();
        trace.push(format!("{} -> {}", ask.describe(), got.describe()));
        keep(&got, &file, &mut cover);
        if got.status == 0 {
            refused.push(ask);
        }
    }
    drop(held);
    trace.push("the whole GET hangs up".into());
    for ask in refused {
        // The hung-up GET's log line settles it first: what it delivered is then known.
        let got = ask_again(public, &target, ua, &ask, &mut trace).await;
        keep(&got, &file, &mut cover);
    }
    assert!(
        cover.whole(size),
        "the client does not hold every byte:\n{}",
        trace.join("\n")
    );

    let t = closed_within_30s(&app, id, &trace).await;
    assert!(
        t["close_reason"] == "completed" && t["downloads_completed"] == 1,
        "a client holding every byte must complete the link once: {t}\n{}",
        trace.join("\n")
    );
    let served = t["bytes_served"].as_u64().unwrap();
    assert!(
        (size..=size + (16 << 20)).contains(&served),
        "bytes_served {served} outside [{size}, size + FERRY_REFETCH_BYTES]: {t}"
    );
}

/// Asks `ask` again every 250 ms until it is answered (at most 20 times), noting each try.
async fn ask_again(public: SocketAddr, target: &str, ua: &[u8], ask: &Ask, trace: &mut Vec<String>) -> Got {
    let mut got = Got::default();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        got = fetch(public, Ipv4Addr::LOCALHOST, target, Some(ua), ask).await;
        trace.push(format!("{} again -> {}", ask.describe(), got.describe()));
        if got.status != 0 {
            break;
        }
    }
    got
}

/// Checks that the file bytes `got` holds are the file's, and counts them as the client's.
fn keep(got: &Got, file: &[u8], cover: &mut Cover) {
    let n = got.file_bytes(false);
    if n > 0 {
        assert!(got.body[..] == file[got.start as usize..(got.start + n) as usize]);
    }
    cover.add(got.start, n);
}

/// The link's history record once it has closed; fails the test if it is still open 30 s later.
async fn closed_within_30s(app: &TestApp, id: &str, trace: &[String]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(t) = app.history().await.into_iter().find(|t| t["tunnel_id"] == id) {
            return t;
        }
        if Instant::now() > deadline {
            let (_, stats) = app.get(&format!("/admin/tunnels/{id}/stats")).await;
            panic!(
                "a client holding every byte must complete the link once; 30 s later it is still open: {}\n{}",
                stats["tunnel"],
                trace.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The grace period repairs a tail: the completing client's `Range: bytes=0-` is a whole copy
/// again and gets 444; in all it gets at most `FERRY_GRACE_BYTES`.
#[tokio::test(flavor = "multi_thread")]
async fn grace_refetches_of_the_whole_range_never_hand_out_another_copy() {
    let grace_bytes = 1u64 << 20;
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "20"), ("FERRY_GRACE_BYTES", "1048576")]).await;
    let size = 3_000_000u64;
    app.data_file("grace.bin", size as usize);
    let link = app.link("grace.bin").await;
    let id = link["tunnel_id"].as_str().unwrap();
    let (public, target) = split_url(link["download_url"].as_str().unwrap());
    let ua: &[u8] = b"Mozilla/5.0 grace";

    let got = fetch(public, Ipv4Addr::LOCALHOST, &target, Some(ua), &Ask::get()).await;
    assert_eq!((got.status, got.body.len() as u64), (200, size), "{}", got.describe());
    let deadline = Instant::now() + Duration::from_secs(10);
    while completed(&app, id).await < 1 {
        assert!(
            Instant::now() < deadline,
            "ferry did not count the download complete within 10 s\n{}",
            app.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut extra, mut copies, mut trace) = (0, 0, vec![]);
    for k in 0..3 {
        let got = fetch(public, Ipv4Addr::LOCALHOST, &target, Some(ua), &Ask::range("bytes=0-")).await;
        trace.push(format!("grace re-fetch #{k} bytes=0- -> {}", got.describe()));
        extra += got.file_bytes(false);
        if got.body.len() as u64 == size {
            copies += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let cap = grace_bytes.min(size - 1);
    assert!(
        extra <= cap && copies == 0,
        "in the grace period the completing client got {extra} more bytes ({copies} whole copies); at most {cap} \
         and never a copy:\n{}",
        trace.join("\n")
    );
}

/// Any bytes a client sends as its User-Agent make one client, served like any other: control
/// bytes (which the check's parser refuses as they come) and bytes that are not UTF-8 get the
/// file's headers for a HEAD and the whole file once, and the link completes.
#[tokio::test(flavor = "multi_thread")]
async fn user_agents_of_any_bytes_are_served_and_complete_the_link() {
    let app = TestApp::spawn_with(&[("GRACE_PERIOD_SECONDS", "1")]).await;
    for (n, ua) in [&b"\x01\x02\x1b[31m\x7f"[..], b"\xff\xfe\x80", b"", b"\ttab"]
        .iter()
        .enumerate()
    {
        let name = format!("agent{n}.bin");
        let file = app.data_file(&name, 200_000);
        let link = app.link(&name).await;
        let id = link["tunnel_id"].as_str().unwrap();
        let (public, target) = split_url(link["download_url"].as_str().unwrap());
        let from = Ipv4Addr::new(127, 0, 0, 1);
        let head = fetch(
            public,
            from,
            &target,
            Some(ua),
            &Ask {
                head: true,
                ..Ask::get()
            },
        )
        .await;
        assert_eq!(
            (head.status, head.content_length),
            (200, Some(200_000)),
            "HEAD with User-Agent {}: {}",
            show(Some(ua)),
            head.describe()
        );
        let got = fetch(public, from, &target, Some(ua), &Ask::get()).await;
        assert!(
            got.status == 200 && got.body == file,
            "GET with User-Agent {}: {}",
            show(Some(ua)),
            got.describe()
        );
        let t = app.closed(id, Duration::from_secs(10)).await;
        assert_eq!(
            (&t["close_reason"], &t["bytes_served"]),
            (&"completed".into(), &200_000.into()),
            "User-Agent {}",
            show(Some(ua))
        );
    }
}
