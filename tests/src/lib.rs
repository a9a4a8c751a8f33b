//! hivemind-tests
