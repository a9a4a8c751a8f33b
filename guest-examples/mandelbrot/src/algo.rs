// The Mandelbrot kernel, shared verbatim by the guest and the native baseline of `hivemind bench runtime`
// (which `include!`s this file).

/// A band of rows of a `width` × `height` image, iterated at most `max_iter` times per point.
pub struct Job {
    pub width: u32,
    pub height: u32,
    pub max_iter: u32,
    pub rows: std::ops::Range<u32>,
}

/// Parses `"WIDTH HEIGHT MAX_ITER [ROW_FROM ROW_TO]"`.
pub fn parse(input: &[u8]) -> Result<Job, String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let numbers: Result<Vec<u32>, _> = text.split_whitespace().map(str::parse::<u32>).collect();
    let bad = || format!("expected `WIDTH HEIGHT MAX_ITER [ROW_FROM ROW_TO]`, got `{}`", text.trim());
    match *numbers.map_err(|_| bad())?.as_slice() {
        [width, height, max_iter] => Ok(Job { width, height, max_iter, rows: 0..height }),
        [width, height, max_iter, from, to] if from <= to && to <= height => {
            Ok(Job { width, height, max_iter, rows: from..to })
        }
        _ => Err(bad()),
    }
}

/// Points of `row` that stay bounded for `max_iter` iterations.
pub fn inside_count(job: &Job, row: u32) -> u32 {
    let ci = -1.2 + 2.4 * f64::from(row) / f64::from(job.height.max(1));
    (0..job.width)
        .filter(|&col| {
            let cr = -2.0 + 3.0 * f64::from(col) / f64::from(job.width.max(1));
            let (mut zr, mut zi) = (0.0f64, 0.0f64);
            for _ in 0..job.max_iter {
                let (zr2, zi2) = (zr * zr, zi * zi);
                if zr2 + zi2 > 4.0 {
                    return false;
                }
                zi = 2.0 * zr * zi + ci;
                zr = zr2 - zi2 + cr;
            }
            true
        })
        .count() as u32
}

/// The map step's output: the inside count of every row of the band, space-separated.
pub fn render(job: &Job) -> String {
    let counts: Vec<String> = job.rows.clone().map(|row| inside_count(job, row).to_string()).collect();
    counts.join(" ")
}
