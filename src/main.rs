use std::process::ExitCode;

// glibc's malloc was a fifth of a `get_customer` call's CPU in perf (much of it
// `malloc_consolidate` on the request's larger buffers and futures); mimalloc is built for
// many small, short-lived allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    agentcrm::cli::main().await
}
