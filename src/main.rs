//! The `meshgate` command line: parses arguments, sets up logging and the Tokio runtime, and
//! calls into `meshgate-config`, `meshgate-proxy` and `meshgate-pki`.

#![forbid(unsafe_code)]

mod demo;
mod summary;

/// mimalloc: measured about 7% less CPU per proxied request than glibc malloc, whose arenas
/// also grew by `mprotect` under load (see BENCHMARKS.md); free pages go back to the system
/// within 100 ms of being freed when mimalloc looks (`meshgate_alloc::purge_promptly`), and
/// it is asked to look once a second (`give_back_free_pages`).
#[global_allocator]
static GLOBAL: meshgate_alloc::MiMalloc = meshgate_alloc::MiMalloc;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use meshgate_config::spiffe::{SpiffeId, TrustDomain};
use meshgate_pki::{Authority, KeyAlgorithm, LeafSpec};

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "A data-plane proxy for service meshes that share a root CA"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// A config file or a directory of *.yaml / *.yml files; repeatable.
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
        /// Worker threads (default: one per core), as Envoy's --concurrency.
        #[arg(long)]
        concurrency: Option<usize>,
        /// How long to wait for open requests after SIGTERM or SIGINT, in seconds.
        #[arg(long, default_value_t = 5)]
        drain_timeout: u64,
        /// Do not log warnings with this code (`MG0101`), or of this code and resource
        /// (`MG0101=VirtualService team/*`); repeatable.
        #[arg(long, value_name = "CODE[=RESOURCE]")]
        suppress: Vec<String>,
    },
    /// Validate the configuration and print a summary and warnings, or every error.
    Check {
        /// A config file or a directory; repeatable.
        #[arg(short = 'c', long = "config", required = true)]
        config: Vec<PathBuf>,
        /// Hide warnings with this code (`MG0101`), or of this code and resource
        /// (`MG0101=VirtualService team/*`, `*` a wildcard), as `istioctl analyze --suppress`;
        /// repeatable.
        #[arg(long, value_name = "CODE[=RESOURCE]")]
        suppress: Vec<String>,
        /// `text` for people, `json` for CI.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// A backend that answers every request with JSON of what it received, or as fortio's
    /// echo server when the query holds fortio's parameters (delay, status, size, header, close).
    Echo {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Echo the bytes of each TCP connection instead of answering HTTP.
        #[arg(long)]
        tcp: bool,
        /// Worker threads (default: one per CPU); 1 runs everything on one thread.
        #[arg(long)]
        concurrency: Option<usize>,
        /// The longest `delay=` a request may ask for (a Go duration, as fortio's
        /// -max-echo-delay); longer ones sleep this long.
        #[arg(long, default_value = "1.5s", value_parser = go_duration)]
        max_delay: Duration,
        /// The largest `size=` payload, in KiB (as fortio's -maxpayloadsizekb); larger ones
        /// send this much.
        #[arg(long, default_value_t = 256)]
        max_payload_kb: usize,
    },
    /// Two meshes on this machine, end to end, with a result table.
    Demo {
        /// Leave everything running and print commands to try.
        #[arg(long)]
        keep_running: bool,
    },
    /// Make and inspect Istio-style certificates.
    #[command(subcommand)]
    Pki(Pki),
    /// GET an admin endpoint and exit 0 on 200: a container HEALTHCHECK where the image has no
    /// shell or HTTP client.
    Probe {
        /// `http://host:port/path` (plain HTTP, as the admin listener speaks).
        #[arg(default_value = "http://127.0.0.1:15000/ready")]
        url: String,
        /// How long to wait for the answer, in seconds.
        #[arg(long, default_value_t = 2)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum Pki {
    /// A shared root CA: root-cert.pem, root-key.pem.
    Root {
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The root's subject common name.
        #[arg(long, default_value = "meshgate shared root")]
        common_name: String,
        /// An RSA 2048 key instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// A per-mesh CA in Istio's cacerts layout: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem.
    Intermediate {
        /// The directory of the root (or of a parent intermediate).
        #[arg(long)]
        root: PathBuf,
        /// The mesh's trust domain (Istio's `trustDomain`), which the CA's subject names.
        #[arg(long)]
        trust_domain: String,
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// An RSA 2048 key instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
    },
    /// A workload leaf in the file-mounted layout: cert-chain.pem, key.pem, root-cert.pem.
    Workload {
        /// The directory of the issuing CA (cacerts layout).
        #[arg(long)]
        ca: PathBuf,
        /// The workload's identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
        #[arg(long)]
        spiffe_id: String,
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS SANs; repeatable.
        #[arg(long)]
        dns: Vec<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
        /// An RSA 2048 key (Istio's default workload key) instead of ECDSA P-256.
        #[arg(long)]
        rsa: bool,
        /// Issue it although the CA is another trust domain's mesh CA: what issuer binding
        /// exists to refuse, so only for testing that it does.
        #[arg(long)]
        allow_foreign_trust_domain: bool,
    },
    /// SPIFFE ID, trust domain, issuer, validity and SPKI SHA-256 of each certificate in a PEM file;
    /// with -c, whether this configuration's ISTIO_MUTUAL servers would accept it as a client's
    /// chain (leaf first) now, and if not, why (exit status 1).
    Inspect {
        /// A PEM file of one or more certificates (a chain: leaf first).
        file: PathBuf,
        /// The configuration (files or directories) whose gateway is asked.
        #[arg(short = 'c', long = "config")]
        config: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    meshgate_alloc::purge_promptly();
    let cli = Cli::parse();
    // The demo prints a table; only warnings (a refused handshake, say) belong beside it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            concurrency,
            drain_timeout,
            suppress,
        } => {
            let runtime = tokio_runtime(concurrency)?;
            runtime.block_on(run(config, Duration::from_secs(drain_timeout), &suppress))
        }
        Command::Check {
            config,
            suppress,
            output,
        } => check(&config, &suppress, output),
        Command::Echo {
            listen,
            tcp,
            concurrency,
            max_delay,
            max_payload_kb,
        } => {
            let limits = meshgate_proxy::echo::Limits {
                max_delay,
                max_payload: max_payload_kb
                    .checked_mul(1024)
                    .context("--max-payload-kb is too large")?,
            };
            let runtime = tokio_runtime(concurrency)?;
            runtime.block_on(async {
                let echo = if tcp {
                    meshgate_proxy::echo::Echo::start_tcp(listen)
                } else {
                    meshgate_proxy::echo::Echo::start_with(listen, limits)
                }
                .with_context(|| format!("cannot bind {listen}"))?;
                tracing::info!(address = %echo.address, "echo listening");
                give_back_free_pages();
                shutdown_signal().await;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Probe { url, timeout } => {
            let status = probe(&url, std::time::Duration::from_secs(timeout.max(1)))?;
            println!("{url}: {status}");
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo { keep_running } => {
            let runtime = tokio_runtime(None)?;
            let ok = runtime.block_on(demo::run(keep_running))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Pki(pki) => pki_command(pki),
    }
}

async fn run(
    config: Vec<PathBuf>,
    drain: Duration,
    suppress: &[String],
) -> anyhow::Result<ExitCode> {
    // What the files hold, taken before each is read: a file that changes from here on is
    // reloaded at the first poll, even if it changed while being loaded.
    let seen = meshgate_proxy::reload::Fingerprint::config(&config);
    let model = match meshgate_config::load(&config) {
        Ok(model) => model,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let seen = seen.with_certificates(&model);
    for w in shown(&model.warnings, suppress) {
        tracing::warn!("{w}");
    }
    // Every handler before the proxy starts: a signal without one ends the process.
    let stop = shutdown_signal();
    let hangup = meshgate_proxy::reload::hangup();
    let running = meshgate_proxy::start(model).await?;
    give_back_free_pages();
    for w in shown(&running.warnings(), suppress) {
        tracing::warn!("{w}");
    }
    meshgate_proxy::reload::run(&running, &config, seen, hangup, stop).await;
    tracing::info!("shutting down: draining for at most {}s", drain.as_secs());
    running.shutdown(drain).await;
    Ok(ExitCode::SUCCESS)
}

fn check(config: &[PathBuf], suppress: &[String], output: Output) -> anyhow::Result<ExitCode> {
    let model = match meshgate_config::load_checked(config) {
        Ok(model) => model,
        Err((errors, warnings)) => {
            let shown = shown(&warnings, suppress);
            let suppressed = warnings.len() - shown.len();
            if output == Output::Json {
                let errors: Vec<_> = errors.0.iter().map(error_json).collect();
                let warnings: Vec<_> = shown.iter().map(|w| warning_json(w)).collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false,
                        "errors": errors,
                        "warnings": warnings,
                        "suppressed": suppressed,
                    })
                );
            } else {
                for e in &errors.0 {
                    println!("error: {e}");
                }
                for w in &shown {
                    println!("warning {w}");
                }
                println!("{} error(s)", errors.0.len());
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // Also read the files it names and build the TLS configs, as `run` would, without binding.
    let model = Arc::new(model);
    let metrics = Arc::new(meshgate_proxy::metrics::Metrics::new());
    let runtime = match meshgate_proxy::material::Material::read(&model) {
        Ok(material) => meshgate_proxy::tls::workload_api::fetch_once(&model).and_then(|svid| {
            meshgate_proxy::runtime::Runtime::build(
                model.clone(),
                &material.with_svid(svid),
                metrics,
                None,
            )
            .map_err(|e| e.to_string())
        }),
        Err(e) => Err(e.to_string()),
    };
    let mut warnings = model.warnings.clone();
    if let Ok(r) = &runtime {
        warnings.extend(r.warnings.iter().cloned());
    }
    let shown = shown(&warnings, suppress);
    let suppressed = warnings.len() - shown.len();
    if output == Output::Json {
        let errors: Vec<_> = match &runtime {
            Err(e) => vec![serde_json::json!({"message": e.to_string()})],
            Ok(_) => Vec::new(),
        };
        let warnings: Vec<_> = shown.iter().map(|w| warning_json(w)).collect();
        println!(
            "{}",
            serde_json::json!({
                "ok": runtime.is_ok(),
                "errors": errors,
                "warnings": warnings,
                "suppressed": suppressed,
            })
        );
        return Ok(if runtime.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    print!("{}", summary::summary(&model, runtime.as_ref().ok()));
    for w in &shown {
        println!("warning {w}");
    }
    if suppressed > 0 {
        println!("({suppressed} warning(s) suppressed)");
    }
    if let Err(e) = runtime {
        println!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    println!("configuration OK");
    Ok(ExitCode::SUCCESS)
}

/// The warnings no `--suppress` rule hides.
fn shown<'a>(
    warnings: &'a [meshgate_config::Warning],
    suppress: &[String],
) -> Vec<&'a meshgate_config::Warning> {
    warnings
        .iter()
        .filter(|w| !suppress.iter().any(|rule| w.suppressed_by(rule)))
        .collect()
}

fn warning_json(w: &meshgate_config::Warning) -> serde_json::Value {
    serde_json::json!({
        "code": w.code.id(),
        "name": w.code.name(),
        "file": w.file,
        "resource": w.resource,
        "field": w.field,
        "message": w.message,
    })
}

fn error_json(e: &meshgate_config::ConfigError) -> serde_json::Value {
    let file = (!e.file.as_os_str().is_empty()).then_some(&e.file);
    serde_json::json!({
        "file": file,
        "line": e.position.map(|p| p.0),
        "column": e.position.map(|p| p.1),
        "resource": e.resource,
        "field": e.field,
        "message": e.message,
        "text": e.to_string(),
    })
}

fn pki_command(pki: Pki) -> anyhow::Result<ExitCode> {
    let alg = |rsa: bool| {
        if rsa {
            KeyAlgorithm::Rsa2048
        } else {
            KeyAlgorithm::EcdsaP256
        }
    };
    match pki {
        Pki::Root {
            out,
            common_name,
            rsa,
        } => {
            Authority::root(&common_name, alg(rsa))?.write_root(&out)?;
            println!("wrote {}/root-cert.pem and root-key.pem", out.display());
        }
        Pki::Intermediate {
            root,
            trust_domain,
            out,
            rsa,
        } => {
            let td = TrustDomain::new(&trust_domain)
                .map_err(|e| anyhow::anyhow!("--trust-domain `{trust_domain}`: {e}"))?;
            let parent = Authority::load(&root)?;
            parent.intermediate(&td, alg(rsa))?.write_cacerts(&out)?;
            println!(
                "wrote {}/ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem",
                out.display()
            );
        }
        Pki::Workload {
            ca,
            spiffe_id,
            out,
            dns,
            hours,
            rsa,
            allow_foreign_trust_domain,
        } => {
            let id = SpiffeId::parse(&spiffe_id)
                .map_err(|e| anyhow::anyhow!("--spiffe-id `{spiffe_id}`: {e}"))?;
            if hours <= 0 {
                bail!("--hours must be positive");
            }
            let authority = Authority::load(&ca)?;
            if let Some(own) = authority.mesh_trust_domain() {
                if own != id.trust_domain() && !allow_foreign_trust_domain {
                    bail!(
                        "{} is the mesh CA of trust domain `{own}`, and `{spiffe_id}` is of \
                         `{}`: one mesh's CA issuing another mesh's identity is what issuer \
                         binding refuses (--allow-foreign-trust-domain issues it anyway, to \
                         test that)",
                        ca.display(),
                        id.trust_domain()
                    );
                }
            }
            let mut spec = LeafSpec::spiffe(&spiffe_id);
            spec.dns = dns;
            spec.key = alg(rsa);
            spec.not_after = spec.not_before + time_hours(hours);
            authority.issue(&spec)?.write(&out)?;
            println!(
                "wrote {}/cert-chain.pem, key.pem, root-cert.pem",
                out.display()
            );
        }
        Pki::Inspect { file, config } => {
            inspect(&file)?;
            if !config.is_empty() && !would_accept(&file, &config)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(file: &Path) -> anyhow::Result<()> {
    for (i, cert) in meshgate_pki::inspect(file)?.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("certificate {i}:");
        println!("{cert}");
    }
    Ok(())
}

/// Asks the configuration's verifier about the chain in `file`; whether it accepts it.
fn would_accept(file: &Path, config: &[PathBuf]) -> anyhow::Result<bool> {
    use rustls::pki_types::pem::PemObject;
    let model = meshgate_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let svid =
        meshgate_proxy::tls::workload_api::fetch_once(&model).map_err(|e| anyhow::anyhow!(e))?;
    let material = meshgate_proxy::material::Material::read(&model)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_svid(svid);
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(file)
        .with_context(|| format!("reading {}", file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading {}", file.display()))?;
    println!();
    let name = &model.proxy.name;
    match meshgate_proxy::tls::inspect::would_accept(&model, &material, &chain)? {
        Ok(peer) => {
            let origin = meshgate_proxy::origin::origin(&peer, &model.trust);
            println!(
                "accepted by MeshGateway {name}: {} ({origin:?} caller)",
                peer.spiffe_id
            );
            Ok(true)
        }
        Err(e) => {
            println!("refused by MeshGateway {name}: {}: {e}", e.reason());
            Ok(false)
        }
    }
}

fn time_hours(hours: i64) -> meshgate_pki::Duration {
    meshgate_pki::Duration::hours(hours) + meshgate_pki::Duration::minutes(5)
}

/// `--concurrency 1` is one event loop on the main thread, as one Envoy worker (measured: about
/// 6% less CPU per request than a one-worker multi-thread runtime); more workers share the
/// connections through Tokio's work-stealing scheduler.
fn tokio_runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(0) => bail!("--concurrency must be at least 1"),
        Some(1) => {
            let mut b = tokio::runtime::Builder::new_current_thread();
            // Poll the I/O driver every 128 tasks instead of 61: under 64 busy connections,
            // measured -18% p99 and +2% requests/s (BENCHMARKS.md); 16 and 256 were worse.
            b.event_interval(128);
            b
        }
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    // Named so that operators (and the tests) can count them in /proc or top.
    Ok(builder
        .thread_name("meshgate-worker")
        .enable_all()
        .build()?)
}

/// Once a second, mimalloc looks for free pages to give back to the system
/// (`meshgate_alloc::collect`). It looks on its own only when something allocates or frees:
/// without this, what the last burst before a quiet spell freed (parked connections' buffers)
/// would stay resident. The look visits the heap of the worker that runs it, which with
/// `--concurrency 1` is the whole proxy's. One call a second costs nothing measurable.
fn give_back_free_pages() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            meshgate_alloc::collect();
        }
    });
}

/// A Go duration (`1.5s`, `500ms`), as fortio's flags take them.
fn go_duration(s: &str) -> Result<Duration, String> {
    meshgate_proxy::echo::parse_duration(s).ok_or_else(|| {
        format!("{s:?} is not a duration: a number and a unit (ns, us, ms, s, m, h)")
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are registered when this is called, not when
/// the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// One `GET` over plain HTTP/1.1 with a deadline; the status code of the answer.
fn probe(url: &str, timeout: std::time::Duration) -> anyhow::Result<u16> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("`{url}`: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let address = authority
        .to_socket_addrs()
        .with_context(|| format!("`{authority}` is not host:port"))?
        .next()
        .with_context(|| format!("`{authority}` resolves to nothing"))?;
    let mut tcp = std::net::TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connect {address}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = tcp.read(head.get_mut(read..).unwrap_or_default())?;
        anyhow::ensure!(n > 0, "{address} closed without an answer");
        read += n;
    }
    let line = String::from_utf8_lossy(head.get(..read).unwrap_or_default()).into_owned();
    line.strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {line:?}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and every flag and argument of every command says what it is for.
    #[test]
    fn every_command_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        let cli = super::Cli::command();
        walk(&cli, "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk sees the nested commands, not just the top.
        assert!(cli
            .find_subcommand("pki")
            .and_then(|p| p.find_subcommand("workload"))
            .is_some_and(|w| w
                .get_arguments()
                .any(|a| a.get_id() == "allow_foreign_trust_domain")));
    }
}
