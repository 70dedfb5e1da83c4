//! Background work every serving process runs beside the transports. Work items are rows
//! claimed with `FOR UPDATE SKIP LOCKED` under a lease, so several processes share them
//! without doing one twice, and a process that dies leaves nothing lost: its leases expire
//! and another process (or its own restart) takes the rows up again.

pub mod cron;
pub mod outbound;
pub mod queue;
pub mod webhooks;

/// How long a process that was told to stop waits for calls and background work in flight
/// (`AGENTCRM_DRAIN_SECS`, 0 to 600; default 30). Background work stops at its next
/// boundary and hands its lease back well before that.
pub fn drain_grace() -> std::time::Duration {
    let seconds = std::env::var("AGENTCRM_DRAIN_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s <= 600)
        .unwrap_or(30);
    std::time::Duration::from_secs(seconds)
}
