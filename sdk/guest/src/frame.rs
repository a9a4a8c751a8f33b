//! Frames (SPEC §2.2): a 4-byte little-endian length followed by that many bytes, the format of split
//! outputs and reduce inputs. Kept dependency-free so any guest can use it.

/// Appends one frame holding `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("a frame holds at most 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Encodes every payload as one frame, in order.
pub fn encode_frames<I: IntoIterator<Item = P>, P: AsRef<[u8]>>(payloads: I) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        write_frame(&mut out, payload.as_ref());
    }
    out
}

/// Decodes a sequence of frames; fails with a message naming the offset of a truncated frame.
pub fn decode_frames(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while !bytes.is_empty() {
        let Some((header, body)) = bytes.split_first_chunk::<4>() else {
            return Err(format!("truncated frame header at byte {offset}"));
        };
        let len = u32::from_le_bytes(*header) as usize;
        if body.len() < len {
            return Err(format!(
                "frame at byte {offset} announces {len} bytes but only {} remain",
                body.len()
            ));
        }
        frames.push(body[..len].to_vec());
        bytes = &body[len..];
        offset += 4 + len;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let payloads: Vec<Vec<u8>> = vec![b"".to_vec(), b"a".to_vec(), vec![7; 1000]];
        assert_eq!(decode_frames(&encode_frames(&payloads)), Ok(payloads));
    }

    #[test]
    fn truncated_frames_rejected() {
        let mut bytes = encode_frames([b"hello"]);
        bytes.pop();
        assert_eq!(decode_frames(&bytes), Err("frame at byte 0 announces 5 bytes but only 4 remain".into()));
        assert_eq!(decode_frames(&[1, 0]), Err("truncated frame header at byte 0".into()));
    }
}
