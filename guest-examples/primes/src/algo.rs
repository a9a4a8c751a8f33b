// The prime-counting kernel, shared verbatim by the guest, the component and the native baseline of
// `hivemind bench runtime` (which `include!`s this file).

/// Counts the primes `p` with `lo <= p < hi`, by trial division with odd divisors.
pub fn count_primes(lo: u64, hi: u64) -> u64 {
    let mut count = 0;
    for n in lo.max(2)..hi {
        if n < 4 {
            count += 1;
            continue;
        }
        if n % 2 == 0 {
            continue;
        }
        let mut d = 3;
        let mut prime = true;
        while d * d <= n {
            if n % d == 0 {
                prime = false;
                break;
            }
            d += 2;
        }
        if prime {
            count += 1;
        }
    }
    count
}

/// Parses `"lo hi"` (decimal, whitespace-separated).
pub fn parse_range(input: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi)), None) if lo <= hi => Ok((lo, hi)),
        _ => Err(format!("expected `LO HI` with LO <= HI, got `{}`", text.trim())),
    }
}

/// Splits `"lo hi"` into `parts` ranges of about equal width.
pub fn split_range(lo: u64, hi: u64, parts: u64) -> Vec<(u64, u64)> {
    let step = (hi - lo).div_ceil(parts).max(1);
    (lo..hi).step_by(step as usize).map(|start| (start, (start + step).min(hi))).collect()
}

/// Sums decimal counts.
pub fn sum_counts(outputs: &[Vec<u8>]) -> Result<u64, String> {
    outputs
        .iter()
        .map(|o| {
            std::str::from_utf8(o).ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                format!("map output `{}` is not a count", String::from_utf8_lossy(o))
            })
        })
        .sum()
}
