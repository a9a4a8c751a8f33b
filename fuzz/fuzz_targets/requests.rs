//! The request parsers: every JSON body the coordinator accepts, and the size, duration and module-id
//! parsers, never panic on arbitrary input; what parses serialises and parses back to the same value.
#![no_main]

use hivemind_proto::api::{CompleteBatch, Heartbeat, LeaseRequest, RegisterWorker, SubmitTask};
use hivemind_proto::units::{parse_duration, parse_size};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&value).expect("serialises")).expect("parses back");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<SubmitTask>(data);
    round_trip::<CompleteBatch>(data);
    round_trip::<RegisterWorker>(data);
    round_trip::<Heartbeat>(data);
    round_trip::<LeaseRequest>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_size(text);
        let _ = parse_duration(text);
    }
});
