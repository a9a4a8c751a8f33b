//! hivemind-coordinator
