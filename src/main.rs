use clap::Parser;

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
