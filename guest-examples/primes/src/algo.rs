// The prime-counting kernel, shared verbatim by the guest, the component and the native baseline of
// `hivemind bench runtime` (which `include!`s this file).

/// Counts the primes `p` with `lo <= p < hi`, by trial division with odd divisors. Ranges below 2^32 use
/// 32-bit arithmetic (a 64-bit division costs several times a 32-bit one on x86-64, natively and in wasm).
pub fn count_primes(lo: u64, hi: u64) -> u64 {
    match (u32::try_from(lo), u32::try_from(hi)) {
        (Ok(lo), Ok(hi)) => (lo.max(2)..hi).filter(|&n| is_prime_u32(n)).count() as u64,
        _ => (lo.max(2)..hi).filter(|&n| is_prime_u64(n)).count() as u64,
    }
}

fn is_prime_u32(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d: u32 = 3;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

fn is_prime_u64(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d: u64 = 3;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
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
