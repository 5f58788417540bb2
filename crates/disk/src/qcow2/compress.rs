//! Decompression of compressed clusters.
//!
//! QEMU writes a compressed cluster as one raw deflate stream (window bits
//! -12, no zlib header) or as one or more zstd frames, followed by padding
//! up to the next 512-byte sector; the reader knows only the sector count,
//! so the input may hold trailing garbage and decompression stops when the
//! cluster is full.

use std::io::Read;

use flate2::{Decompress, FlushDecompress, Status};

use super::header::CompressionType;

/// Decompresses `input` into `out`, which must be filled completely.
pub(crate) fn decompress(
    kind: CompressionType,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match kind {
        CompressionType::Zlib => inflate(input, out),
        CompressionType::Zstd => unzstd(input, out),
    }
}

fn inflate(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    // Raw deflate, as QEMU writes it.
    let mut d = Decompress::new(false);
    loop {
        let in_pos = d.total_in() as usize;
        let out_pos = d.total_out() as usize;
        if out_pos >= out.len() {
            return Ok(());
        }
        let status = d
            .decompress(
                &input[in_pos..],
                &mut out[out_pos..],
                FlushDecompress::Finish,
            )
            .map_err(|e| format!("deflate: {e}"))?;
        let progressed = d.total_in() as usize != in_pos || d.total_out() as usize != out_pos;
        match status {
            Status::StreamEnd => {
                if (d.total_out() as usize) < out.len() {
                    return Err(format!(
                        "deflate stream ends after {} of {} bytes",
                        d.total_out(),
                        out.len()
                    ));
                }
                return Ok(());
            }
            Status::Ok | Status::BufError if progressed => {}
            _ => {
                if (d.total_out() as usize) >= out.len() {
                    return Ok(());
                }
                return Err("truncated deflate stream".into());
            }
        }
    }
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut src = input;
    let mut filled = 0;
    // A cluster may be split into several frames.
    while filled < out.len() {
        let before = src.len();
        let mut dec =
            ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| format!("zstd: {e}"))?;
        let mut progressed = false;
        loop {
            let n = dec
                .read(&mut out[filled..])
                .map_err(|e| format!("zstd: {e}"))?;
            if n == 0 {
                break;
            }
            progressed = true;
            filled += n;
            if filled == out.len() {
                return Ok(());
            }
        }
        drop(dec);
        if !progressed && src.len() == before {
            break;
        }
    }
    if filled < out.len() {
        return Err(format!(
            "zstd data ends after {filled} of {} bytes",
            out.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn raw_deflate_round_trips_with_trailing_garbage() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
        let mut c = Compress::new(Compression::default(), false);
        let mut z = vec![0u8; 8192];
        c.compress(&data, &mut z, FlushCompress::Finish).unwrap();
        z.truncate(c.total_out() as usize);
        z.extend_from_slice(&[0xff; 100]);
        let mut out = vec![0u8; 4096];
        decompress(CompressionType::Zlib, &z, &mut out).unwrap();
        assert_eq!(out, data);
        // Too little data is an error, not a panic.
        let mut big = vec![0u8; 8192];
        assert!(decompress(CompressionType::Zlib, &z[..10], &mut big).is_err());
        assert!(decompress(CompressionType::Zstd, &z, &mut out).is_err());
        assert!(decompress(CompressionType::Zstd, &[], &mut out).is_err());
    }
}
