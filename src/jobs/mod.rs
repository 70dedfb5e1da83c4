//! Background work every serving process runs beside the transports. Work items are rows
//! claimed with `FOR UPDATE SKIP LOCKED` under a lease, so several processes share them
//! without doing one twice, and a process that dies leaves nothing lost: its leases expire
//! and another process (or its own restart) takes the rows up again.

pub mod cron;
pub mod outbound;
pub mod queue;
pub mod webhooks;
