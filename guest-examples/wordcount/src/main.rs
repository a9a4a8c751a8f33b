//! `wordcount`: counts words. Split cuts the text into chunks of whole lines; map counts the words of one
//! chunk into a JSON object `{"word": count}`; reduce merges the objects into one. Words are maximal runs of
//! alphanumeric characters, lowercased.
//!
//! `hivemind run wordcount.wasm --input book.txt`

use std::collections::BTreeMap;

/// Lines per map subtask.
const LINES_PER_CHUNK: usize = 8;

type Counts = BTreeMap<String, u64>;

struct WordCount;

fn to_json(counts: &Counts) -> Result<Vec<u8>, String> {
    serde_json::to_vec(counts).map_err(|e| format!("cannot encode counts: {e}"))
}

impl hivemind_guest::Task for WordCount {
    fn map(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let text = String::from_utf8_lossy(input);
        let mut counts = Counts::new();
        for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            *counts.entry(word.to_lowercase()).or_default() += 1;
        }
        to_json(&counts)
    }

    fn split(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let lines: Vec<&[u8]> = input.split_inclusive(|&b| b == b'\n').collect();
        Ok(lines.chunks(LINES_PER_CHUNK).map(|chunk| chunk.concat()).collect())
    }

    fn reduce(&self, outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let mut total = Counts::new();
        for (i, output) in outputs.iter().enumerate() {
            let counts: Counts =
                serde_json::from_slice(output).map_err(|e| format!("map output {i} is not a count object: {e}"))?;
            for (word, n) in counts {
                *total.entry(word).or_default() += n;
            }
        }
        to_json(&total)
    }
}

fn main() {
    hivemind_guest::run(&WordCount);
}
