//! Call control endpoints (outbound calls, status callbacks). Being written.
