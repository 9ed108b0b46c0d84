//! The `steer` binary: command line -> logging -> `steer::app`. Nothing else.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use steer::app;

/// mimalloc instead of glibc's malloc: hyper reallocates its 8 KiB read
/// buffers on most requests and allocates a few small objects per request;
/// glibc spent ~5,600 instructions per proxied request in malloc/free
/// (callgrind), mimalloc's thread-local free lists far fewer (BENCHMARKS.md).
///
/// Built without transparent huge pages (libmimalloc-sys's `no_thp`):
/// mimalloc asks for them on its arenas, and each 2 MiB huge page is
/// resident as a whole once touched. A steer at rest held 8.5 MiB of
/// anonymous memory, 4-6 MiB of it in huge pages; without them, 1.2 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives freed pages back to the OS after a purge delay, and
/// only when it next runs. steer sets 100 ms (mimalloc's default is 1 s):
/// RSS follows what is in use soon after connections go idle (and give
/// their buffers back, `server::park`). Purging at once (0, steer's
/// setting before) gave pages back that the next request touched again:
/// 0.24 minor page faults per request under load and 19 % more CPU per
/// request on HTTP/1.1 (BENCHMARKS.md). `MIMALLOC_PURGE_DELAY` still
/// overrides it.
const PURGE_DELAY_MS: std::os::raw::c_long = 100;
/// `mi_option_purge_delay` of mimalloc v3's `mimalloc.h` (the crate's
/// constants list v2's options only); the version is pinned in Cargo.lock.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[allow(unsafe_code)] // reviewed: one FFI call with plain integer arguments
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set takes an option id and a value, both plain
        // integers, and stores the value atomically; it is called before
        // steer starts any thread. No pointers are involved.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// On a multi-thread runtime a connection's task may run on any worker,
/// so a buffer is often freed by a thread other than the one that
/// allocated it. mimalloc queues such frees for the owning thread and
/// returns those pages only when that thread next collects, which a
/// worker that went quiet with its connections idle may never do: idle
/// connections then kept ~30 KiB each resident (BENCHMARKS.md, Memory).
/// A worker about to sleep collects, at most once a second.
#[allow(unsafe_code)] // reviewed: one FFI call with a plain bool argument
fn collect_when_parked() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST
        .get()
        .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1));
    if due {
        LAST.set(Some(now));
        // SAFETY: mi_collect takes a plain bool and works on the calling
        // thread's own heap; no pointers are involved.
        unsafe {
            libmimalloc_sys::mi_collect(false);
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "steer",
    version,
    about = "Steers traffic to identity-server deployments",
    // `steer` alone serves, like `steer run`; the serving flags may come
    // before the subcommand too (`steer --config FILE run`).
    args_conflicts_with_subcommands = false
)]
struct Cli {
    /// Log format; default: pretty on a terminal, JSON lines otherwise.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What `steer` / `steer run` take; `check` reads the same `--config`.
#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// Route table to serve [env: STEER_CONFIG] [default: routes.toml].
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Take the listening sockets over from a running steer on
    /// listen.upgrade_socket (docs/operations.md, Binary upgrade).
    #[arg(long)]
    upgrade: bool,
    /// Worker threads, at least 1; 1 runs everything on one thread (like
    /// one nginx worker) [env: STEER_WORKERS] [default: one per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
}

impl ServeArgs {
    /// Flags given after the subcommand win over those before it.
    fn or(self, before: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config.or(before.config),
            upgrade: self.upgrade || before.upgrade,
            workers: self.workers.or(before.workers),
        }
    }
}

/// The config path a command uses: `--config`, else `STEER_CONFIG`, else
/// `./routes.toml`.
fn config_path(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("STEER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("routes.toml"))
}

/// Worker threads: `--workers`, else `STEER_WORKERS` (which must be a
/// number of at least 1), else one per CPU.
fn workers(given: Option<u16>) -> Result<Option<u16>, String> {
    if given.is_some() {
        return Ok(given);
    }
    match std::env::var("STEER_WORKERS") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(format!(
                "STEER_WORKERS must be a number of worker threads of at least 1; got `{v}`"
            )),
        },
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the route table (the default when no command is given).
    Run(ServeArgs),
    /// Validate a route table and lint it: a summary and exit 0, or every
    /// error and exit 1.
    Check {
        /// The route table to check [default: what `steer run` would load:
        /// --config, STEER_CONFIG, ./routes.toml].
        file: Option<PathBuf>,
        /// The route table to check, as `steer run` takes it.
        #[arg(short = 'c', long, value_name = "FILE", conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Exit 1 on lint warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Dry run: which route a request matches, why, and where it would go.
    Route {
        /// The route table.
        file: PathBuf,
        /// The request's method (GET, POST, ...).
        method: String,
        /// The request's URL (`https://auth.example.com/ui/login`); its
        /// host is the Host.
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The TCP peer address to assume (default 127.0.0.1).
        #[arg(long)]
        client_ip: Option<IpAddr>,
    },
    /// Two built-in demo deployments (blue :9001, green :9002) behind steer
    /// on :8080 (admin :9901), serving a copy of the demo table.
    Demo {
        /// Worker threads, at least 1 [default: one per CPU].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
    },
    /// One demo deployment (a ZITADEL-like fake upstream) on ADDR; prints
    /// the bound address; SIGTERM stops it gracefully, as ZITADEL stops.
    DemoUpstream {
        /// Its name (in answers and `x-served-by`): letters, digits, `-`,
        /// `_` and `.`.
        name: String,
        /// Where to listen, IP:PORT (port 0 picks a free one).
        addr: std::net::SocketAddr,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Pretty,
    Json,
}

/// `RUST_LOG`, else INFO; rustls only at ERROR unless `RUST_LOG` names it.
/// rustls logs a client's bad ClientHello at WARN with the client's bytes
/// in the line (an SNI of 16 KB: a 16 KB line, as fast as clients send
/// them). `RUST_LOG=info,rustls=warn` shows them when wanted.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let names_rustls = std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rustls"));
    match "rustls=error".parse() {
        Ok(quiet) if !names_rustls => filter.add_directive(quiet),
        _ => filter,
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter = log_filter();
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    if json {
        // Access lines do not go through tracing in JSON mode (the request
        // path writes them to `accesslog`'s buffer), so one layer does.
        steer::accesslog::install();
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 1, as
            // the contract says for invalid arguments (clap's own is 2,
            // which steer reserves for a listener that cannot be bound).
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tune_allocator();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check {
            file,
            config,
            strict,
        }) => check(&config_path(file.or(config).or(cli.serve.config)), strict),
        Some(Command::Route {
            file,
            method,
            url,
            headers,
            client_ip,
        }) => route(
            file,
            app::DryRun {
                method,
                url,
                headers,
                client_ip,
            },
        ),
        Some(Command::Demo { workers }) => serve(Serve::Demo, workers.or(cli.serve.workers)),
        Some(Command::DemoUpstream { name, addr }) => {
            serve(Serve::DemoUpstream(name, addr), cli.serve.workers)
        }
        Some(Command::Run(args)) => run(args.or(cli.serve)),
        None => run(cli.serve),
    }
}

fn run(args: ServeArgs) -> ExitCode {
    serve(
        Serve::Run {
            config: config_path(args.config),
            upgrade: args.upgrade,
        },
        args.workers,
    )
}

fn check(file: &std::path::Path, strict: bool) -> ExitCode {
    match app::check(file) {
        Ok((summary, warnings)) => {
            for w in &warnings {
                eprintln!("{w}");
            }
            println!("{summary}");
            if strict && !warnings.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::from(1)
        }
    }
}

fn route(file: PathBuf, run: app::DryRun) -> ExitCode {
    let config = match steer::config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            for m in e.messages() {
                eprintln!("{m}");
            }
            return ExitCode::from(1);
        }
    };
    match app::explain_route(&config, &run) {
        Ok((report, matched)) => {
            print!("{report}");
            if matched {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("steer route: {e}");
            ExitCode::from(1)
        }
    }
}

/// What a runtime runs.
enum Serve {
    Run { config: PathBuf, upgrade: bool },
    Demo,
    DemoUpstream(String, std::net::SocketAddr),
}

/// `run`, `demo` or `demo-upstream` on a tokio runtime.
fn serve(what: Serve, workers: Option<u16>) -> ExitCode {
    steer::server::open_files::raise_to_hard();
    let workers = match self::workers(workers) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("steer: {e}");
            return ExitCode::from(1);
        }
    };
    let built = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = n {
                builder.worker_threads(usize::from(n));
            }
            builder
                .on_thread_park(collect_when_parked)
                .enable_all()
                .build()
        }
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("steer: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match what {
            Serve::Run { config, upgrade } => app::run(&config, upgrade).await,
            Serve::Demo => app::demo().await,
            Serve::DemoUpstream(name, addr) => app::demo_upstream(&name, addr).await,
        }
    });
    // Connections still open end with the runtime; their access-log lines
    // are the last to write out. Threads stuck in the kernel (a config read
    // on a hung mount) are not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    steer::accesslog::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // One line: the bind error names the address, the listener and
        // the cause already.
        Err(e) if e.downcast_ref::<app::BindError>().is_some() => {
            eprintln!("steer: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            if let Some(load) = e.downcast_ref::<steer::config::LoadError>() {
                for m in load.messages() {
                    eprintln!("{m}");
                }
            } else {
                eprintln!("steer: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
