//! hivemind-worker
