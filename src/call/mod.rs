//! One task per call: the [`machine`] (every decision, sans-IO, injected clock, in parts), the
//! [`driver`] (the only async code: both sockets, outboxes, the one timer), connecting the
//! agent leg ([`connect`]), the tool-webhook client ([`tool_webhook`]) and a transfer's
//! update markup ([`transfer`]). This module only
//! re-exports; the types live in [`settings`] and [`end`].
//!
//! A media frame's path: `http::media` upgrades the carrier's socket → [`run`] → the driver
//! reads a frame (`wire::ws`) → the call's `carrier::CarrierSession` decodes it → the machine
//! queues the μ-law in the agent outbox → the driver asks the machine for what the agent leg
//! owes ([`CallMachine::poll_transmit`]), which the call's `agent::Session` encodes → the
//! driver writes it. Agent audio takes the mirror path.
//!
//! Nothing here knows a vendor's JSON (that is `agent::*`) or a carrier's (`carrier::*`).

pub mod connect;
pub mod driver;
pub mod end;
pub mod machine;
pub mod post_call;
pub mod recording;
pub mod settings;
pub mod stop;
pub mod tool_webhook;
pub mod transfer;

pub use driver::{run, CallerRead, CallerWrite};
pub use end::EndReason;
pub use machine::CallMachine;
pub use settings::{
    CallContext, CallSettings, CLOSE_TIMEOUT, DRAIN_NOTICE_GRACE, MAX_CALLER_MESSAGE_BYTES,
};
