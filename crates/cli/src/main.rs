use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = tandem_cli::Cli::parse();
    match tandem_cli::run(cli, &mut std::io::stdout().lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
