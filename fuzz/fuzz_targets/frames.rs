//! The frame codec (SPEC §2.2): decoding arbitrary bytes never panics, and whatever decodes re-encodes to
//! the same bytes.
#![no_main]

use hivemind_proto::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frames) = frame::decode_frames(data) {
        assert_eq!(frame::encode_frames(&frames), data, "decode then encode is the identity");
    }
});
