use clap::Parser;

/// The system allocator, except that a job process whose memory limit refuses an
/// allocation exits with a status its supervisor reads (see `worker::limits`).
#[global_allocator]
static ALLOCATOR: trainyard::worker::limits::NotingAllocator =
    trainyard::worker::limits::NotingAllocator;

fn main() -> std::process::ExitCode {
    trainyard::engine::device::configure_threads();
    let cli = trainyard::cli::Cli::parse();
    trainyard::cli::init_tracing(cli.log_json);
    match cli.run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
