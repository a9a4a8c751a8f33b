//! hivemind-client
