use std::process::ExitCode;

// glibc's malloc was a fifth of a `get_customer` call's CPU in perf (much of it
// `malloc_consolidate` on the request's larger buffers and futures); mimalloc is built for
// many small, short-lived allocations across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h (v3). Eager commit touches the arena's first
/// pages up front: 12 MB more idle RSS on this server.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

fn main() -> ExitCode {
    // Before the runtime starts its threads; options are read when an arena is reserved.
    // SAFETY: nothing else runs yet (mi_option_set is not thread-safe).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(agentcrm::cli::main()),
        Err(error) => {
            eprintln!("agentcrm: could not start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
