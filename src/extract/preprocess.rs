//! Decoding and the reference's "clean" preprocessing: the uint8 RGB image becomes float32,
//! each channel is resized alone with Pillow's bicubic filter (a = -0.5, support widened
//! when downscaling, f64 accumulation; `fast_image_resize`'s Catmull-Rom convolution is
//! that filter), clipped to [0, 255] and not re-quantised, then `(x/255 - mean) / std`.
//!
//! Owns: bytes to a normalised `(H, W, 3)` float array. Must not: run a network.

use fast_image_resize as fr;
use image::{DynamicImage, ImageReader, Limits};

/// Decoder limits against decompression bombs: at most 2^14 pixels a side and 1 GiB of
/// decoder allocations per image.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_ALLOC: u64 = 1 << 30;

/// Optional crop before resizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Crop {
    #[default]
    None,
    /// The largest centred square (offsets rounded down).
    Center,
}

impl Crop {
    pub fn name(self) -> &'static str {
        match self {
            Crop::None => "none",
            Crop::Center => "center",
        }
    }
}

/// Decodes an image (first frame of a GIF) to 8-bit RGB: gray is replicated, alpha dropped.
pub fn decode_rgb(bytes: &[u8]) -> Result<image::RgbImage, String> {
    let mut r = ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut lim = Limits::default();
    lim.max_image_width = Some(MAX_SIDE);
    lim.max_image_height = Some(MAX_SIDE);
    lim.max_alloc = Some(MAX_ALLOC);
    r.limits(lim);
    let img: DynamicImage = r.decode().map_err(|e| e.to_string())?;
    if img.width() == 0 || img.height() == 0 {
        return Err("image has no pixels".into());
    }
    Ok(img.into_rgb8())
}

/// Centre-crops to a square when asked.
pub fn crop(img: image::RgbImage, crop: Crop) -> image::RgbImage {
    match crop {
        Crop::None => img,
        Crop::Center => {
            let (w, h) = img.dimensions();
            let s = w.min(h);
            if s == w && s == h {
                return img;
            }
            image::imageops::crop_imm(&img, (w - s) / 2, (h - s) / 2, s, s).to_image()
        }
    }
}

/// Resizes one f32 channel with Pillow's bicubic filter; the same size is a copy, as in Pillow.
pub fn resize_channel(src: &[f32], w: u32, h: u32, ow: u32, oh: u32) -> Result<Vec<f32>, String> {
    if (w, h) == (ow, oh) {
        return Ok(src.to_vec());
    }
    let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let s = fr::images::Image::from_vec_u8(w, h, bytes, fr::PixelType::F32)
        .map_err(|e| e.to_string())?;
    let mut d = fr::images::Image::new(ow, oh, fr::PixelType::F32);
    let opts =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom));
    fr::Resizer::new()
        .resize(&s, &mut d, &opts)
        .map_err(|e| e.to_string())?;
    Ok(d.buffer()
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The clean resize of an RGB image to `size x size`, clipped to [0, 255]: three planes.
pub fn clean_resize(img: &image::RgbImage, size: u32) -> Result<[Vec<f32>; 3], String> {
    let (w, h) = img.dimensions();
    let raw = img.as_raw();
    let plane = |c: usize| -> Result<Vec<f32>, String> {
        let ch: Vec<f32> = raw.iter().skip(c).step_by(3).map(|&v| v as f32).collect();
        let mut r = resize_channel(&ch, w, h, size, size)?;
        for v in &mut r {
            *v = v.clamp(0.0, 255.0);
        }
        Ok(r)
    };
    Ok([plane(0)?, plane(1)?, plane(2)?])
}

/// Normalises resized planes into an interleaved `(H, W, 3)` array: `(x/255 - mean) / std`
/// in f32 as the reference's torchvision transforms do.
pub fn normalise_hwc(planes: &[Vec<f32>; 3], mean: [f64; 3], std: [f64; 3], out: &mut [f32]) {
    let n = planes[0].len();
    for c in 0..3 {
        let (m, s) = (mean[c] as f32, std[c] as f32);
        for i in 0..n {
            out[i * 3 + c] = (planes[c][i] / 255.0 - m) / s;
        }
    }
}

/// Bytes to a normalised `(size, size, 3)` array written into `out`.
pub fn preprocess(
    bytes: &[u8],
    crop_mode: Crop,
    size: u32,
    mean: [f64; 3],
    std: [f64; 3],
    out: &mut [f32],
) -> Result<(), String> {
    let img = crop(decode_rgb(bytes)?, crop_mode);
    let planes = clean_resize(&img, size)?;
    normalise_hwc(&planes, mean, std, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pillow's bicubic resampling written out directly (separable, horizontal pass first,
    /// support scaled by the downscale factor, weights normalised), in f64: the oracle.
    fn pillow_bicubic(src: &[f64], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f64> {
        fn filter(x: f64) -> f64 {
            let a = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * a
            } else {
                0.0
            }
        }
        // For each output index: the first input index and the normalised weights.
        fn coeffs(len: usize, out_len: usize) -> Vec<(usize, Vec<f64>)> {
            let scale = len as f64 / out_len as f64;
            let fs = scale.max(1.0);
            let support = 2.0 * fs;
            (0..out_len)
                .map(|o| {
                    let center = (o as f64 + 0.5) * scale;
                    let lo = (center - support + 0.5).max(0.0) as usize;
                    let hi = ((center + support + 0.5) as usize).min(len);
                    let ws: Vec<f64> = (lo..hi)
                        .map(|i| filter((i as f64 - center + 0.5) / fs))
                        .collect();
                    let tot: f64 = ws.iter().sum();
                    (lo, ws.iter().map(|v| v / tot).collect())
                })
                .collect()
        }
        let cx = coeffs(w, ow);
        let mut tmp = vec![0.0; ow * h];
        for y in 0..h {
            for (x, (lo, ws)) in cx.iter().enumerate() {
                tmp[y * ow + x] = ws
                    .iter()
                    .enumerate()
                    .map(|(j, k)| src[y * w + lo + j] * k)
                    .sum();
            }
        }
        let cy = coeffs(h, oh);
        let mut out = vec![0.0; ow * oh];
        for (y, (lo, ws)) in cy.iter().enumerate() {
            for x in 0..ow {
                out[y * ow + x] = ws
                    .iter()
                    .enumerate()
                    .map(|(j, k)| tmp[(lo + j) * ow + x] * k)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn resize_matches_pillow_bicubic_written_out() {
        let mut r = crate::rng::Rng::new(3);
        for &(w, h, ow, oh) in &[
            (37usize, 53usize, 224usize, 224usize),
            (300, 250, 224, 224),
            (9, 9, 4, 6),
        ] {
            let src: Vec<f64> = (0..w * h).map(|_| (r.f64() * 255.0).floor()).collect();
            let srcf: Vec<f32> = src.iter().map(|&v| v as f32).collect();
            let got = resize_channel(&srcf, w as u32, h as u32, ow as u32, oh as u32).unwrap();
            let want = pillow_bicubic(&src, w, h, ow, oh);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - e).abs() < 2e-3,
                    "{w}x{h}->{ow}x{oh} at {i}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn center_crop_keeps_the_middle_square() {
        let img = image::RgbImage::from_fn(5, 3, |x, _| image::Rgb([x as u8, 0, 0]));
        let c = crop(img, Crop::Center);
        assert_eq!(c.dimensions(), (3, 3));
        assert_eq!(c.get_pixel(0, 0)[0], 1);
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        assert!(decode_rgb(b"\x89PNG\r\n\x1a\nnot really").is_err());
        assert!(decode_rgb(b"").is_err());
    }
}
