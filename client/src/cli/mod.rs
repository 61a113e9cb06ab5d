//! The `spool` command line: administration, producing from lines of text and consuming
//! to the terminal or JSON lines.
//!
//! # Layout
//! - `mod.rs`: the argument tree, the runtime, and turning errors into messages and exit
//!   codes.
//! - `topic`: `spool topic create|list|describe|delete`.
//! - `produce`: `spool produce`, lines in, one record per line, through the batching
//!   [`spool_client::Producer`].
//! - `consume`: `spool consume`, as a plain reader or a group member.
//! - `group`: `spool group list|describe` and `spool offsets commit|get`.
//! - `queue`: `spool queue create|list|describe|delete|receive|work|redrive`.
//! - `generate`: `spool completions SHELL` and `spool man`, from the argument tree.
//! - `output`: aligned tables, human numbers and the JSON form of a record.
//! - `progress`: the progress bar of long produce and consume runs.
//!
//! # Exit codes
//! - 0: success.
//! - 1: the broker refused the request (unknown topic, bad argument, ...), a record was not
//!   acknowledged, or another runtime error (e.g. an unreadable input file).
//! - 2: usage error: the command line does not parse (clap's own code).
//! - 3: the broker could not be reached (nothing listens at `--server`, or the connection
//!   was lost and could not be re-established).
//!
//! Errors are printed as one line, `spool: <what failed>: <why>`, never as a debug dump.

mod cluster;
mod consume;
mod generate;
mod group;
mod output;
mod produce;
mod progress;
mod queue;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spool_client::{Client, DEFAULT_ENDPOINT};

/// Broker refused, record not acknowledged, or another runtime error.
const EXIT_FAILURE: u8 = 1;
/// The broker could not be reached.
const EXIT_UNREACHABLE: u8 = 3;

const MAIN_AFTER_HELP: &str = "\
Examples:
  spool topic create events --partitions 3
  seq 1 1000 | spool produce events
  spool consume events -n 10
  spool consume events --group billing --follow --output json
  spool queue create events jobs && spool queue work events jobs --exec 'cat'

Exit codes:
  0  success
  1  the broker refused the request (e.g. unknown topic), a record was not
     acknowledged, or another runtime error
  2  usage error (bad arguments)
  3  the broker could not be reached";

/// Spool's command line: manage topics and consumer groups, produce and consume records.
#[derive(Parser, Debug)]
#[command(name = "spool", version, after_help = MAIN_AFTER_HELP)]
pub struct Cli {
    /// The broker's gRPC address.
    #[arg(
        long,
        global = true,
        env = "SPOOL_SERVER",
        default_value = DEFAULT_ENDPOINT,
        value_name = "URL"
    )]
    server: String,

    /// PEM CA that signed the broker's certificate (for an https:// --server).
    #[arg(long, global = true, env = "SPOOL_CA", value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// PEM client certificate, for mutual TLS (with --key).
    #[arg(long, global = true, env = "SPOOL_CERT", value_name = "FILE")]
    cert: Option<std::path::PathBuf>,

    /// PEM private key of --cert. Give it before the subcommand (`spool --key k.pem
    /// produce ...`): after `produce`, `--key` is the records' key.
    #[arg(long, env = "SPOOL_KEY", value_name = "FILE")]
    key: Option<std::path::PathBuf>,

    /// Bearer token sent with every request (prefer the SPOOL_TOKEN variable: arguments
    /// show up in process listings).
    #[arg(long, global = true, env = "SPOOL_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Compress requests with this codec and ask for compressed answers (for a slow link).
    #[arg(long, global = true, env = "SPOOL_GRPC_COMPRESSION", value_enum)]
    grpc_compression: Option<CompressionArg>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Append records read line by line from stdin or a file.
    Produce(produce::ProduceArgs),
    /// Print a topic's records, as a plain reader or a consumer group member.
    Consume(consume::ConsumeArgs),
    /// Inspect consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Read or set a consumer group's committed offsets.
    #[command(subcommand)]
    Offsets(group::OffsetsCommand),
    /// Create and inspect queues; receive records or run a command per record.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Show the cluster's nodes and where partitions live.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "\
Examples:
  spool completions bash > ~/.local/share/bash-completion/completions/spool
  spool completions zsh > \"${fpath[1]}/_spool\"
  spool completions fish > ~/.config/fish/completions/spool.fish")]
    Completions(generate::CompletionsArgs),
    /// Print the man page, or write one per subcommand into a directory.
    #[command(after_help = "\
Examples:
  spool man | man -l -
  spool man --dir /usr/local/share/man/man1")]
    Man(generate::ManArgs),
}

/// Parses the command line, runs it, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spool: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(run(cli));
    // Background tasks (a producer, a reader) must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spool: {}", describe(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // These need no broker.
    let command = match cli.command {
        Command::Completions(a) => return generate::completions(a),
        Command::Man(a) => return generate::man(a),
        other => other,
    };
    let tls = (cli.ca.is_some() || cli.cert.is_some() || cli.key.is_some()).then(|| {
        spool_client::TlsOptions {
            ca: cli.ca.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            domain: None,
        }
    });
    let options = spool_client::ClientOptions {
        tls,
        token: cli.token.clone(),
        grpc_compression: cli.grpc_compression.map(|c| match c {
            CompressionArg::Gzip => spool_client::GrpcCompression::Gzip,
            CompressionArg::Zstd => spool_client::GrpcCompression::Zstd,
        }),
        ..spool_client::ClientOptions::default()
    };
    let client = Client::connect_with(cli.server.as_str(), options).await?;
    match command {
        Command::Topic(cmd) => topic::run(&client, cmd).await,
        Command::Produce(args) => produce::run(&client, args).await,
        Command::Consume(args) => consume::run(&client, args).await,
        Command::Group(cmd) => group::run_group(&client, cmd).await,
        Command::Offsets(cmd) => group::run_offsets(&client, cmd).await,
        Command::Queue(cmd) => queue::run(&client, cmd).await,
        Command::Cluster(cmd) => cluster::run(&client, cmd).await,
        Command::Completions(_) | Command::Man(_) => unreachable!("handled before connecting"),
    }
}

/// The client error somewhere in the chain, if any.
fn client_error(e: &anyhow::Error) -> Option<&spool_client::Error> {
    e.chain()
        .find_map(|cause| cause.downcast_ref::<spool_client::Error>())
}

fn exit_code(e: &anyhow::Error) -> u8 {
    match client_error(e) {
        Some(spool_client::Error::Unreachable { .. }) => EXIT_UNREACHABLE,
        _ => EXIT_FAILURE,
    }
}

/// The error as one line: each context, then the cause, joined by `: `. A broker refusal
/// is shown by its message alone (the broker's messages name what was wrong), without the
/// gRPC code in Rust's debug spelling.
fn describe(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| match cause.downcast_ref::<spool_client::Error>() {
            Some(spool_client::Error::Broker { message, .. }) => message.clone(),
            _ => cause.to_string(),
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn argument_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unreachable_broker_exits_3_and_refusals_exit_1() {
        let unreachable = anyhow::Error::new(spool_client::Error::Unreachable {
            endpoint: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(exit_code(&unreachable), 3);
        let refused = anyhow::Error::new(spool_client::Error::Broker {
            code: tonic::Code::NotFound,
            message: "topic \"x\" does not exist".into(),
        })
        .context("cannot consume");
        assert_eq!(exit_code(&refused), 1);
        assert_eq!(
            describe(&refused),
            "cannot consume: topic \"x\" does not exist"
        );
    }
}
