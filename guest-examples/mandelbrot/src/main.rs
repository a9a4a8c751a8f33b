//! `mandelbrot`: renders rows of the Mandelbrot set and returns how many points of each row are inside
//! (CPU-bound, floating point). Input `"WIDTH HEIGHT MAX_ITER [ROW_FROM ROW_TO]"`; output one count per
//! row, space-separated. Split cuts the rows into 8 bands; reduce joins the bands' counts in order.
//!
//! `echo "200 100 500" | hivemind run mandelbrot.wasm --input -`

struct Mandelbrot;

struct Job {
    width: u32,
    height: u32,
    max_iter: u32,
    rows: std::ops::Range<u32>,
}

fn parse(input: &[u8]) -> Result<Job, String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let numbers: Result<Vec<u32>, _> = text.split_whitespace().map(str::parse::<u32>).collect();
    let bad = || format!("expected `WIDTH HEIGHT MAX_ITER [ROW_FROM ROW_TO]`, got `{}`", text.trim());
    match numbers.map_err(|_| bad())?.as_slice() {
        &[width, height, max_iter] => Ok(Job { width, height, max_iter, rows: 0..height }),
        &[width, height, max_iter, from, to] if from <= to && to <= height => {
            Ok(Job { width, height, max_iter, rows: from..to })
        }
        _ => Err(bad()),
    }
}

fn inside_count(job: &Job, row: u32) -> u32 {
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

impl hivemind_guest::Task for Mandelbrot {
    fn map(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let job = parse(input)?;
        let counts: Vec<String> = job.rows.clone().map(|row| inside_count(&job, row).to_string()).collect();
        Ok(counts.join(" ").into_bytes())
    }

    fn split(&self, input: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let job = parse(input)?;
        let band = job.height.div_ceil(8).max(1);
        Ok((0..job.height)
            .step_by(band as usize)
            .map(|from| {
                let to = (from + band).min(job.height);
                format!("{} {} {} {from} {to}", job.width, job.height, job.max_iter).into_bytes()
            })
            .collect())
    }

    fn reduce(&self, outputs: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let parts: Vec<String> = outputs.iter().map(|o| String::from_utf8_lossy(o).into_owned()).collect();
        Ok(parts.join(" ").into_bytes())
    }
}

fn main() {
    hivemind_guest::run(&Mandelbrot);
}
