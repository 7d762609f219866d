use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{Cli, Command};
use ferry::config::{Config, Source};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(),
        Command::Mcp => ferry::mcp::run_stdio(),
        command => ferry::cli::run(command),
    }
}

fn serve() -> ExitCode {
    heap::limit_arenas();
    let config = Source::from_process().and_then(|s| Config::load(&s));
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let filter: tracing_subscriber::filter::Targets = config.log_filter.parse().expect("validated by Config::load");
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        config.prepare_dirs()?;
        let admin = tokio::net::TcpListener::bind(config.admin_addr)
            .await
            .map_err(|e| anyhow::anyhow!("FERRY_ADMIN_ADDR: cannot listen on {}: {e}", config.admin_addr))?;
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            s.cancel();
        });
        tokio::spawn(return_freed_memory(shutdown.clone()));
        ferry::run(config, admin, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's allocator, which ferry tunes: one arena, and freed memory handed back after a burst.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod heap {
    /// glibc's `struct mallinfo2` (glibc 2.33 and later).
    #[repr(C)]
    struct MallInfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }

    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
        fn mallinfo2() -> MallInfo2;
        fn malloc_trim(pad: usize) -> i32;
    }

    /// glibc gives each thread that allocates its own heap arena (up to 8 per core) and keeps
    /// freed memory in those arenas, so every burst of downloads would leave ferry holding more
    /// memory, spread over arenas. One arena is plenty for a server whose work is short
    /// bookkeeping, since nginx moves the bytes.
    pub fn limit_arenas() {
        const M_ARENA_MAX: i32 = -8;
        // SAFETY: `mallopt` only sets an allocator parameter; it is called once, before any other
        // thread exists, with a parameter glibc documents.
        unsafe {
            mallopt(M_ARENA_MAX, 1);
        }
    }

    /// Bytes the allocator holds free, and bytes in use.
    pub fn held() -> (usize, usize) {
        // SAFETY: `mallinfo2` only reads the allocator's statistics and returns them by value.
        let info = unsafe { mallinfo2() };
        (info.fordblks, info.uordblks)
    }

    /// Hands the free pages the allocator holds back to the system.
    pub fn trim() {
        // SAFETY: `malloc_trim` is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod heap {
    pub fn limit_arenas() {}
    pub fn held() -> (usize, usize) {
        (0, 0)
    }
    pub fn trim() {}
}

/// Even with one arena, glibc keeps most of what a burst freed: it returns only a free top of the
/// heap, and only above a threshold that large frees raise. So every few seconds, if the heap has
/// changed since the last look and holds a megabyte or more free, its free pages go back to the
/// system. That costs one walk of the heap's free lists, and nothing while ferry is idle.
async fn return_freed_memory(shutdown: CancellationToken) {
    const AT_LEAST: usize = 1 << 20;
    let mut every = ferry::model::Every::new(std::time::Duration::from_secs(5), shutdown);
    let mut last = (0, 0);
    while every.tick().await {
        let held = heap::held();
        if held != last && held.0 >= AT_LEAST {
            heap::trim();
            tracing::debug!(
                free = held.0,
                used = held.1,
                "returned the heap's free pages to the system"
            );
        }
        last = held;
    }
}
