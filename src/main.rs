use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    agentcrm::cli::main().await
}
