//! Procedural image "datasets" for the demo and the benches: a few scene families with
//! distinct visual statistics (sky gradients, foliage texture, city blocks, night lights,
//! beaches), deterministic from a seed, so a fresh machine can extract and query real
//! images with nothing downloaded.
//!
//! Owns: generating pixels. Must not: run networks or touch the store.

use crate::rng::Rng;

/// The scene families.
pub const FAMILIES: [&str; 5] = ["sky", "forest", "city", "night", "beach"];

fn clamp(v: f64) -> u8 {
    v.clamp(0.0, 255.0) as u8
}

/// Smooth value noise in [0, 1] on a grid of `cell` pixels.
struct Noise {
    grid: Vec<f64>,
    gw: usize,
    cell: f64,
}

impl Noise {
    fn new(r: &mut Rng, w: u32, h: u32, cell: f64) -> Noise {
        let gw = (w as f64 / cell) as usize + 2;
        let gh = (h as f64 / cell) as usize + 2;
        Noise {
            grid: (0..gw * gh).map(|_| r.f64()).collect(),
            gw,
            cell,
        }
    }

    fn at(&self, x: u32, y: u32) -> f64 {
        let (fx, fy) = (x as f64 / self.cell, y as f64 / self.cell);
        let (ix, iy) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - ix as f64, fy - iy as f64);
        let s = |t: f64| t * t * (3.0 - 2.0 * t);
        let g = |a: usize, b: usize| self.grid[b * self.gw + a];
        let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * s(tx);
        let bot = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * s(tx);
        top + (bot - top) * s(ty)
    }
}

/// Image `index` of scene family `family` (one of [`FAMILIES`]), `w x h` pixels.
pub fn scene(family: &str, seed: u64, index: u64, w: u32, h: u32) -> image::RgbImage {
    let fam = family.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let mut r = Rng::new(seed ^ index.wrapping_mul(0x9E37_79B9) ^ fam);
    match family {
        "sky" => {
            let cell = 40.0 + r.f64() * 60.0;
            let clouds = Noise::new(&mut r, w, h, cell);
            let tint = r.f64() * 40.0;
            image::RgbImage::from_fn(w, h, |x, y| {
                let t = y as f64 / h as f64;
                let c = (clouds.at(x, y) - 0.5).max(0.0) * 2.0 * 200.0;
                image::Rgb([
                    clamp(70.0 + tint + 120.0 * t + c),
                    clamp(130.0 + 90.0 * t + c),
                    clamp(230.0 + 20.0 * t + c * 0.2),
                ])
            })
        }
        "forest" => {
            let cell = 3.0 + r.f64() * 4.0;
            let fine = Noise::new(&mut r, w, h, cell);
            let coarse = Noise::new(&mut r, w, h, 30.0);
            image::RgbImage::from_fn(w, h, |x, y| {
                let v = fine.at(x, y) * 0.6 + coarse.at(x, y) * 0.4;
                image::Rgb([
                    clamp(20.0 + 70.0 * v),
                    clamp(50.0 + 130.0 * v),
                    clamp(15.0 + 40.0 * v),
                ])
            })
        }
        "city" => {
            let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([150, 160, 175]));
            let n = 4 + r.below(6) as u32;
            for _ in 0..n {
                let bw = w / 8 + r.below((w / 4) as u64) as u32;
                let bh = h / 3 + r.below((h / 2) as u64) as u32;
                let x0 = r.below(w as u64) as u32;
                let g = 60.0 + r.f64() * 90.0;
                for y in h.saturating_sub(bh)..h {
                    for x in x0..(x0 + bw).min(w) {
                        let window = (x % 12 < 6) && (y % 16 < 8);
                        let v = if window { g + 60.0 } else { g };
                        img.put_pixel(x, y, image::Rgb([clamp(v), clamp(v), clamp(v + 8.0)]));
                    }
                }
            }
            img
        }
        "night" => {
            let glow = Noise::new(&mut r, w, h, 80.0);
            let density = 0.002 + r.f64() * 0.004;
            let mut stars = Rng::new(r.next_u64());
            image::RgbImage::from_fn(w, h, |x, y| {
                if stars.f64() < density {
                    let b = 180.0 + stars.f64() * 75.0;
                    return image::Rgb([clamp(b), clamp(b * 0.9), clamp(b * 0.6)]);
                }
                let g = glow.at(x, y) * 25.0;
                image::Rgb([clamp(5.0 + g), clamp(8.0 + g), clamp(20.0 + g * 1.5)])
            })
        }
        _ => {
            // beach
            let horizon = h as f64 * (0.35 + r.f64() * 0.2);
            let sand = Noise::new(&mut r, w, h, 2.0);
            let waves = Noise::new(&mut r, w, h, 12.0);
            image::RgbImage::from_fn(w, h, |x, y| {
                if (y as f64) < horizon {
                    let t = y as f64 / horizon;
                    image::Rgb([clamp(120.0 + 60.0 * t), clamp(180.0 + 40.0 * t), 240])
                } else if (y as f64) < horizon + h as f64 * 0.12 {
                    let v = waves.at(x, y) * 60.0;
                    image::Rgb([clamp(20.0 + v), clamp(100.0 + v), clamp(150.0 + v)])
                } else {
                    let v = sand.at(x, y) * 40.0;
                    image::Rgb([clamp(200.0 + v), clamp(180.0 + v), clamp(130.0 + v * 0.5)])
                }
            })
        }
    }
}

/// Writes `n` PNG images of a family into `dir` (created if needed).
pub fn write_family(
    dir: &std::path::Path,
    family: &str,
    seed: u64,
    n: u64,
    w: u32,
    h: u32,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        scene(family, seed, i, w, h)
            .save(dir.join(format!("{family}-{i:04}.png")))
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}
