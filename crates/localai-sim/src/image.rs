//! Real outputs: small valid PNGs of the requested size (capped), deterministic per seed and prompt.

/// Encode an RGB PNG of `width` x `height` whose pattern depends on `seed`.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().expect("writing to a Vec cannot fail");
        let (r0, g0, b0) = (
            (seed & 0xff) as u32,
            ((seed >> 8) & 0xff) as u32,
            ((seed >> 16) & 0xff) as u32,
        );
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                data.push(((x * 255 / width.max(1) + r0) & 0xff) as u8);
                data.push(((y * 255 / height.max(1) + g0) & 0xff) as u8);
                data.push((((x ^ y) + b0) & 0xff) as u8);
            }
        }
        writer
            .write_image_data(&data)
            .expect("writing to a Vec cannot fail");
    }
    out
}

/// A stable 64-bit hash of text (FNV-1a), to vary images with the prompt.
pub fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Width and height of a PNG, if `bytes` is one.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}
