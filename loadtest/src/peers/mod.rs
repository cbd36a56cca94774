//! Reusable test peers: the simulated carrier callers (one wire module per carrier over one
//! shared caller) and the mock voice agents (one module per dialect over one shared server).
//! See the [crate docs](crate) for what each module is.
//!
//! Nothing here depends on [`crate::bench`].

pub mod agent_sim;
pub mod assemblyai_sim;
pub mod carrier;
pub mod fixtures;
pub mod mock_server;
pub mod openai_sim;
pub mod telnyx_sim;
pub mod twilio_sim;
