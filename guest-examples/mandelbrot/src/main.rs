//! `mandelbrot`: renders rows of the Mandelbrot set and returns how many points of each row are inside
//! (CPU-bound, floating point). Input `"WIDTH HEIGHT MAX_ITER [ROW_FROM ROW_TO]"`; output one count per
//! row, space-separated. Split cuts the rows into 8 bands; reduce joins the bands' counts in order.
//!
//! `echo "200 100 500" | hivemind run mandelbrot.wasm --input -`

struct Mandelbrot;

include!("algo.rs");

impl hivemind_guest::Task for Mandelbrot {
    fn map(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        Ok(render(&parse(input)?).into_bytes())
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
