//! Command-line definitions: flags are declared once here and used for parsing,
//! `--help` and the README's reference.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_cpus, parse_duration_ms, parse_size};

/// Run untrusted programs from OCI images in isolated sandboxes, with limits.
#[derive(Debug, Parser)]
#[command(name = "runbox", version, about, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// Where images, layers and sandbox state live.
    #[arg(
        long,
        global = true,
        env = "RUNBOX_DATA_DIR",
        default_value = "/var/lib/runbox",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Log verbosity (error, warn, info, debug, trace, or a tracing filter);
    /// default: info for `serve` and `worker`, warn otherwise.
    #[arg(long, global = true, env = "RUNBOX_LOG", value_name = "LEVEL")]
    pub log: Option<String>,

    /// Log lines as text or as JSON objects (one per line, with the request's
    /// fields: client, job id, result key).
    #[arg(long, global = true, env = "RUNBOX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A program catalog directory (programs/*.toml, images/*.toml); default: the
    /// catalog built into runbox.
    #[arg(long, global = true, env = "RUNBOX_CATALOG", value_name = "DIR")]
    pub catalog: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

pub const EXIT_CODES: &str = "\
Exit codes of `runbox run`: the program's own exit code, or 128+N when signal N
ended it (137 when a limit killed it); 130 or 143 when Ctrl+C (SIGINT) or SIGTERM
cancelled the job (a second one stops runbox at once). 125: runbox itself failed
(bad option, unknown image, hostile input, sandbox set-up); 126: the command
cannot be executed; 127: the command was not found. `runbox script` exits 1 when
a command failed. Other commands exit 0 or 125.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and the web playground (docs/api.md). Builds the
    /// catalog's missing images in the background on start.
    Serve(Box<ServeArgs>),
    /// Run a command in a new sandbox from an image.
    Run(Box<RunArgs>),
    /// Manage the local image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a JSON-lines scenario: one command per line, one JSON response per line.
    /// Exits 0 when every command succeeded, 1 when any failed.
    Script(ScriptArgs),
    /// List the catalog's programs, or show one (with its options form).
    Programs(ProgramsArgs),
    /// Build the catalog's images, or run every program on its examples.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Run jobs for a `runbox serve` on this machine: claim them over HTTP, run
    /// them in sandboxes here, report the results (docs/workers.md). SIGTERM or
    /// Ctrl+C drains: nothing new is claimed, running jobs finish and are reported.
    Worker(Box<WorkerArgs>),
    /// Manage the tokens of `runbox worker`s, in the server's database.
    Workers(WorkersArgs),
    /// Database systems and other stateful programs: provision once, snapshot,
    /// query from warm instances (docs/systems.md).
    #[command(subcommand)]
    System(SystemCommand),
    /// Live sandboxes on a running server: create one, exec commands in it one
    /// after the other (state stays between them), put and get files, snapshot,
    /// delete (docs/api.md "Live sandboxes").
    Sandbox(Box<SandboxArgs>),
}

/// `runbox sandbox`: a client of a server's /api/sandboxes.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "RUNBOX_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub server: String,
    /// The admin token (for `ls` and `snapshot --name`; default: DATA_DIR/admin-token).
    #[arg(
        long,
        global = true,
        env = "RUNBOX_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a live sandbox; prints its id.
    Create {
        /// An image in the server's store.
        #[arg(long, group = "from")]
        image: Option<String>,
        /// A catalog program (its image) or system (a warm instance of it).
        #[arg(long, group = "from")]
        program: Option<String>,
        /// A snapshot image made by `runbox sandbox snapshot`.
        #[arg(long, group = "from")]
        snapshot: Option<String>,
        /// Idle time before the server deletes it (default: the server's).
        #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
        idle_timeout: Option<u64>,
        #[arg(long)]
        json: bool,
        /// The whole sandbox's limits (what keeps running between execs, the
        /// writable layer).
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Run a command in a live sandbox; exits with its exit status.
    Exec(Box<SandboxExecArgs>),
    /// Write a host file into a live sandbox.
    Put {
        id: String,
        /// The host file to send.
        file: PathBuf,
        /// Where it goes in the sandbox (relative: under the working directory).
        path: String,
        /// Mode 0755 instead of 0644.
        #[arg(long)]
        executable: bool,
        /// Owner: a user of the image or UID[:GID] (default: the image's user).
        #[arg(long)]
        user: Option<String>,
    },
    /// Read a file from a live sandbox to stdout (or a directory's files into
    /// --output-dir).
    Get {
        id: String,
        path: String,
        /// Write the files here (required for a directory).
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// List every live sandbox (admin).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one live sandbox.
    Info {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a live sandbox (everything in it is killed).
    Rm { id: String },
    /// Freeze a sandbox's changes into an image (the sandbox ends); create new
    /// sandboxes from it with `create --snapshot`.
    Snapshot {
        id: String,
        /// The image name (admin; default runbox-snapshot/ID:latest).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct SandboxExecArgs {
    pub id: String,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGV"
    )]
    pub argv: Vec<String>,
    /// Processes the command leaves running (daemons) stay for later execs.
    #[arg(long)]
    pub keep_running: bool,
    #[command(flatten)]
    pub job: JobArgs,
}

/// `runbox system`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// List the catalog's systems with their fingerprint and snapshot state.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Find the system's snapshot by fingerprint (verified), else provision it cold
    /// (install, start, check, load, stop) and snapshot it.
    Provision {
        id: String,
        /// Provision cold even when a snapshot matches.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run one query (from the argument, or stdin with `-`) on an instance started
    /// from the snapshot, on each system named (comma-separated: side by side).
    Query {
        /// System id(s), comma-separated.
        systems: String,
        /// The query; `-` reads it from stdin.
        query: String,
        /// Run it this many times on the same warm instance (the first answer is
        /// printed; timings of each are reported with --json).
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[arg(long)]
        json: bool,
    },
}

/// `runbox worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The server's URL: http://HOST:PORT or https://HOST.
    #[arg(long, env = "RUNBOX_SERVER", value_name = "URL")]
    pub server: String,
    /// The worker's token (rbw_..., from `runbox workers create NAME`). Prefer
    /// the environment variable: other users can read arguments with `ps`.
    #[arg(
        long,
        env = "RUNBOX_WORKER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: String,
    /// Labels this worker advertises (comma-separated); jobs may require them.
    #[arg(long, value_delimiter = ',', value_name = "LABEL,...")]
    pub labels: Vec<String>,
    /// Jobs run at once (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Longest single claim request (a long poll, at most 60s); lower it when a
    /// proxy on the way cuts idle requests sooner.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub claim_wait: u64,
}

/// `runbox workers`: acts on the server's database directly (run it where the
/// server's data directory or database is reachable).
#[derive(Debug, Args)]
pub struct WorkersArgs {
    /// The server's database (postgres://...; default: SQLite at DATA_DIR/runbox.db).
    #[arg(long, global = true, env = "RUNBOX_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    #[command(subcommand)]
    pub command: WorkersCommand,
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Create a worker and print its token (shown only this once).
    Create {
        /// 1-64 letters, digits, '-', '_' or '.'.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List the workers: when each was last seen, and what it advertised.
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a worker's token (by name or id): its next call is refused.
    Revoke {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

/// `runbox serve`. Every limit has a default good for one machine.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "RUNBOX_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: std::net::SocketAddr,
    /// Jobs run at once by the server itself (default: the number of CPUs); 0
    /// runs none here, leaving them to `runbox worker`s (docs/workers.md).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Jobs that may wait for a worker; past that, new jobs get 503 + Retry-After.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Largest request body (a JSON or multipart job); larger ones get 413 unread.
    #[arg(long, default_value = "32m", value_parser = parse_size, value_name = "SIZE")]
    pub body_limit: u64,
    /// Time a client has to send a request's head.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub header_timeout: u64,
    /// Time a client has to send a request's body.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub body_timeout: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Jobs a client address may submit per minute (0: no limit).
    #[arg(long, default_value_t = 120, value_name = "N")]
    pub rate_limit: u32,
    /// Jobs a client may submit in a burst before the per-minute rate applies.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub rate_burst: u32,
    /// A reverse proxy whose X-Forwarded-For is believed (repeat for several).
    /// Without one, the header is ignored: clients could forge it.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The admin token file (default: DATA_DIR/admin-token, created at first start).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Bytes of stored results (the cache and permalinks) kept; the least
    /// recently used go first.
    #[arg(long, default_value = "1g", value_parser = parse_size, value_name = "SIZE")]
    pub results_max: u64,
    /// Do not build the catalog's missing images at start.
    #[arg(long)]
    pub no_build: bool,
    /// Where catalog image builds run mmdebstrap (a tmpfs such as /dev/shm is fastest).
    #[arg(long, env = "RUNBOX_BUILD_SCRATCH", value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// The database of the job queue and stored results: postgres://... lets
    /// several servers share one queue (default: SQLite at DATA_DIR/runbox.db).
    #[arg(long, env = "RUNBOX_DATABASE", value_name = "URL")]
    pub database: Option<String>,
    /// How long a worker holds a job without a heartbeat before it is given to
    /// another (docs/workers.md).
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub lease: u64,
    /// Claims of a job (by workers that then went silent) before it fails.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_attempts: u32,
    /// Live sandboxes at once (`runbox sandbox`, POST /api/sandboxes), the
    /// systems' warm instances included; more get 429.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_sandboxes: usize,
    /// Live sandboxes one client address may hold at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_sandboxes_per_client: usize,
    /// Idle time after which a live sandbox is deleted (also the most a client
    /// may ask for).
    #[arg(long, default_value = "10m", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub sandbox_idle_timeout: u64,
    /// Images made by sandbox snapshots the store may hold (more get 429 until an
    /// admin removes some with `runbox image rm`).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_snapshots: usize,
    /// Commands run in live sandboxes at once; more wait for a turn.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_execs: usize,
    /// Warm instances kept per database system (docs/systems.md).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub pool_size: usize,
    /// Queries one warm instance answers at once; more wait for a free one.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub queries_per_instance: usize,
    /// The most wall-clock and CPU time one system query may take (a system's own
    /// limit may be lower); the answer then says wall_time_limit.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, value_name = "DURATION")]
    pub query_timeout: u64,
    /// Do not provision the systems and start their warm instances at start (the
    /// first query of each then does).
    #[arg(long)]
    pub no_warm: bool,
}

#[derive(Debug, Args)]
pub struct ProgramsArgs {
    /// Show this program's whole manifest.
    pub id: Option<String>,
    /// Only programs in this category.
    #[arg(long)]
    pub category: Option<String>,
    /// Only programs that read a file (or stdin) of this MIME type.
    #[arg(long, value_name = "MIME")]
    pub accepts: Option<String>,
    /// Only programs that write a file (or stdout) of this MIME type.
    #[arg(long, value_name = "MIME")]
    pub produces: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Build the images of every catalog program, system and dataset generator
    /// from their recipes (cached: only changed recipes are rebuilt).
    Build {
        /// Rebuild even when an image of the same recipe exists.
        #[arg(long)]
        force: bool,
        /// Where mmdebstrap builds each system (default: $TMPDIR or /tmp); a tmpfs
        /// such as /dev/shm is fastest.
        #[arg(long, env = "RUNBOX_BUILD_SCRATCH", value_name = "DIR")]
        scratch_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Run every program (or the ones named) on its example inputs and check the
    /// result its manifest expects: the catalog's smoke test.
    Test {
        ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The script file, or `-` for stdin. Relative paths in it resolve against its
    /// directory (the current directory for stdin).
    pub file: PathBuf,
    /// Stop at the first command that fails.
    #[arg(long)]
    pub fail_fast: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an OCI archive, or a `docker save` tarball.
    Import {
        /// The directory or tarball (gzip-compressed tarballs are accepted).
        path: PathBuf,
        /// Name the image `NAME[:TAG]` (default: the name recorded in the file).
        #[arg(long, short = 't', value_name = "NAME[:TAG]")]
        name: Option<String>,
        /// Print the result as JSON, without progress bars.
        #[arg(long)]
        json: bool,
    },
    /// Build an image from a recipe: Debian packages (mmdebstrap) plus added files.
    /// Cached: an unchanged recipe returns the image it built before.
    Build(BuildArgs),
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove images (by name, digest or id prefix); unshared layers are deleted.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete blobs and layers no image uses.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Pull an image from an OCI registry (Docker Hub when REF names no registry host).
    Pull(PullArgs),
    /// Show the store's disk usage: images, layers, blobs, and what `gc` would free.
    Df {
        #[arg(long)]
        json: bool,
    },
}

/// `runbox image build`. The recipe format: docs/recipes.md.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The recipe file (TOML).
    #[arg(value_name = "RECIPE")]
    pub recipe: PathBuf,
    /// Build even when the store has the image of this exact recipe.
    #[arg(long)]
    pub force: bool,
    /// Where mmdebstrap builds the system (its TMPDIR; default: $TMPDIR or /tmp).
    /// A tmpfs such as /dev/shm is fastest.
    #[arg(long, env = "RUNBOX_BUILD_SCRATCH", value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Print the build report as JSON, without a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `NAME[:TAG]`, `NAME@sha256:...` or `HOST[:PORT]/PATH[:TAG]`. The image is
    /// named as given (`busybox` is pulled from docker.io/library/busybox:latest
    /// and named `busybox:latest`).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Registry user name; the password is read from stdin (--password-stdin).
    /// Default: the registry's entry in $REGISTRY_AUTH_FILE or ~/.docker/config.json.
    #[arg(long, short = 'u', value_name = "NAME", requires = "password_stdin")]
    pub username: Option<String>,
    /// Read the registry password from stdin (never give it on the command line).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Use plain HTTP instead of HTTPS (a registry on loopback without TLS).
    #[arg(long)]
    pub plain_http: bool,
    /// Print the result as JSON, without progress bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to run: NAME[:TAG], a digest, or an image id prefix (or --program).
    #[arg(required_unless_present = "program")]
    pub image: Option<String>,

    /// Run a catalog program instead of an image (see `runbox programs`).
    #[arg(long, value_name = "ID", conflicts_with_all = ["image", "entrypoint", "workdir", "user"])]
    pub program: Option<String>,

    /// Set a program option (validated against its options form).
    #[arg(long = "option", value_name = "NAME=VALUE", requires = "program")]
    pub options: Vec<String>,

    /// Command and arguments (after `--`); default: the image's Entrypoint and Cmd.
    #[arg(last = true, value_name = "ARGV")]
    pub argv: Vec<String>,

    /// Replace the image's Entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,

    #[command(flatten)]
    pub job: JobArgs,
}

/// What a command runs with and how its result comes back: the flags `runbox run`
/// and `runbox sandbox exec` share.
#[derive(Debug, Args, Default)]
pub struct JobArgs {
    /// Set an environment variable (KEY=VALUE, or KEY to pass the host's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory inside the sandbox (default: the image's, else /work).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,

    /// Run as USER[:GROUP] (names from the image, or numbers). Default: the image's
    /// User, else 1000:1000. Root inside is an unprivileged id on the host.
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Place a file before the run: PATH=@HOSTFILE copies a host file, PATH=TEXT
    /// writes TEXT. Relative paths are under the working directory. Add `:x` after
    /// PATH (PATH:x=...) to make it executable.
    #[arg(short = 'i', long = "input", value_name = "PATH=@FILE")]
    pub inputs: Vec<String>,

    /// Collect this file or directory after the run (relative to the working dir).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub outputs: Vec<String>,

    /// Host directory the collected outputs are written to.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Do not pass stdin to the program (it reads end-of-file). Without it, stdin
    /// is passed when it is not a terminal.
    #[arg(long)]
    pub no_stdin: bool,

    /// Print one JSON JobResult instead of mirroring the program's output.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Resource limits. Defaults: 10s wall and CPU time, 1 CPU, 512m memory, 64 pids,
/// 1024 files, 64m file size, 256m tmpfs, 1m per output stream.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Wall-clock time limit (e.g. 10s, 500ms). [default: 10s]
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    pub wall_time: Option<u64>,
    /// CPU time limit over all processes. [default: 10s]
    #[arg(long, value_parser = parse_duration_ms, value_name = "DURATION")]
    pub cpu_time: Option<u64>,
    /// CPU bandwidth, in CPUs (e.g. 0.5, 2). [default: 1]
    #[arg(long, value_parser = parse_cpus, value_name = "N")]
    pub cpus: Option<u32>,
    /// Memory limit, page cache and tmpfs included (e.g. 256m, 1g). [default: 512m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// Most processes and threads alive at once. [default: 64]
    #[arg(long, value_name = "N")]
    pub pids: Option<u32>,
    /// Most open files per process. [default: 1024]
    #[arg(long, value_name = "N")]
    pub nofile: Option<u32>,
    /// Largest file a process may write. [default: 64m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub file_size: Option<u64>,
    /// Size of the writable layer (tmpfs). [default: 256m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub tmpfs_size: Option<u64>,
    /// Inodes of the writable layer. [default: 16384]
    #[arg(long, value_name = "N")]
    pub tmpfs_inodes: Option<u64>,
    /// Bytes of stdout and of stderr kept; the rest is counted and dropped. [default: 1m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub output_limit: Option<u64>,
    /// Bytes of output files collected in total. [default: 16m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub output_files_limit: Option<u64>,
    /// Bytes of stdin and input files in total. [default: 16m]
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub input_limit: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_limits_and_argv() {
        let cli = Cli::try_parse_from([
            "runbox",
            "run",
            "--memory",
            "64m",
            "--wall-time",
            "2s",
            "--cpus",
            "0.5",
            "img",
            "--",
            "sh",
            "-c",
            "echo",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert_eq!(r.image.as_deref(), Some("img"));
        assert_eq!(r.argv, ["sh", "-c", "echo"]);
        assert_eq!(
            (
                r.job.limits.memory,
                r.job.limits.wall_time,
                r.job.limits.cpus
            ),
            (Some(64 << 20), Some(2000), Some(500))
        );
    }

    #[test]
    fn malformed_limits_are_rejected_with_the_reason() {
        let e = Cli::try_parse_from(["runbox", "run", "--memory", "lots", "img"]).unwrap_err();
        assert!(e.to_string().contains("not a size"), "{e}");
    }
}
