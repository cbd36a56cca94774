//! `media-relay` binary: parse configuration, set up logging, bind, serve until SIGTERM/SIGINT.

use clap::Parser;
use media_relay::config::{Cli, Command, LogFormat};
use media_relay::http::settings::RuntimeLayout;
use media_relay::Relay;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (sysexits EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn main() {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Dialects => {
            print!("{}", media_relay::agent::readme_table());
            return;
        }
    };
    init_logging(args.http.log_format);
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("media-relay: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit raised"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    // The per-core layouts' first worker is this thread; `Relay::bind` builds the others.
    let layout = settings.http.runtime;
    let threads = settings.http.worker_threads;
    let serve = async move {
        let relay = Relay::bind(settings).await?;
        relay.run(shutdown_signal()).await;
        anyhow::Ok(())
    };
    let built = match layout {
        RuntimeLayout::Uring => {
            if let Err(e) = run_on_uring(serve) {
                eprintln!("media-relay: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        RuntimeLayout::MultiThread => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        RuntimeLayout::PerCore => tokio::runtime::Builder::new_current_thread()
            .thread_name(media_relay::http::server::BLOCKING_THREAD_NAME)
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("media-relay: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve) {
        eprintln!("media-relay: {e:#}");
        std::process::exit(1);
    }
}

/// `--runtime uring`: this thread is the first worker, on a tokio-uring runtime.
#[cfg(feature = "uring")]
fn run_on_uring(
    serve: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    media_relay::wire::uring::block_on(serve)
        .map_err(|e| anyhow::anyhow!("cannot start the io_uring runtime: {e}"))?
}

/// Without the `uring` feature the configuration refuses `--runtime uring` before this.
#[cfg(not(feature = "uring"))]
fn run_on_uring(_: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    anyhow::bail!("--runtime uring needs a binary built with `--features uring`")
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`): plain text (colours only when
/// stderr is a terminal) or one JSON object per line.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; using Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
