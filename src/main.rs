use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{Cli, Command};
use ferry::config::{Config, Source};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => serve(),
        command => ferry::cli::run(command),
    }
}

fn serve() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates its own heap arena (up to 8 per core) and keeps freed
/// memory in them: after each burst of a thousand downloads ferry held on to 13 to 20 MB more,
/// spread over arenas (measured in tests/it/reliability.rs). One arena is plenty for a server
/// whose work is short bookkeeping (nginx moves the bytes), and keeps its memory near its use.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    const M_ARENA_MAX: i32 = -8;
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    // SAFETY: `mallopt` only sets an allocator parameter; it is called once, before any other
    // thread exists, with a parameter glibc documents.
    unsafe {
        mallopt(M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
