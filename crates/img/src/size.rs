//! Sizes as qemu-img reads and prints them.

use crate::{Error, Result};

/// Parses a size the way qemu-img does (`qemu_strtosz`): a decimal (or
/// `0x` hexadecimal) number of bytes with an optional suffix `b`, `k`, `M`,
/// `G`, `T`, `P` or `E` (case-insensitive, powers of 1024). A decimal
/// fraction is allowed before a suffix other than `b` (`1.5G`).
///
/// ```
/// use vmkit_img::size::parse_size;
/// assert_eq!(parse_size("64k").unwrap(), 65536);
/// assert_eq!(parse_size("1.5M").unwrap(), 1536 * 1024);
/// assert!(parse_size("1Q").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidSize(s.to_string());
    let t = s.trim_start();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let value = u64::from_str_radix(&hex[..end], 16).map_err(|_| bad())?;
        let mul = suffix_multiplier(&hex[end..]).ok_or_else(bad)?;
        return value.checked_mul(mul).ok_or_else(bad);
    }
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(end);
    let mul = suffix_multiplier(suffix).ok_or_else(bad)?;
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut value = int.checked_mul(mul).ok_or_else(bad)?;
    if let Some(frac) = frac {
        if frac.is_empty() || mul == 1 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // At most 19 digits keep the numerator in a u128 product.
        let digits = &frac[..frac.len().min(19)];
        let num: u128 = digits.parse().map_err(|_| bad())?;
        let den = 10u128.pow(digits.len() as u32);
        let extra = u64::try_from(num * u128::from(mul) / den).map_err(|_| bad())?;
        value = value.checked_add(extra).ok_or_else(bad)?;
    }
    // qemu-img refuses sizes that do not fit an int64_t.
    if value > i64::MAX as u64 {
        return Err(bad());
    }
    Ok(value)
}

fn suffix_multiplier(suffix: &str) -> Option<u64> {
    let mut chars = suffix.chars();
    let c = match chars.next() {
        None => return Some(1),
        Some(c) => c,
    };
    if chars.next().is_some() {
        return None;
    }
    let shift = match c.to_ascii_uppercase() {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        'P' => 50,
        'E' => 60,
        _ => return None,
    };
    Some(1 << shift)
}

/// Formats a size as qemu-img prints it (`size_to_str`): three significant
/// digits and a binary unit, e.g. `1 MiB`, `196 KiB`, `1.5 GiB`, `0 B`.
///
/// ```
/// use vmkit_img::size::size_to_str;
/// assert_eq!(size_to_str(1 << 20), "1 MiB");
/// assert_eq!(size_to_str(200704), "196 KiB");
/// assert_eq!(size_to_str(1536 << 20), "1.5 GiB");
/// ```
pub fn size_to_str(value: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // The unit switches when the value reaches 1000 of the smaller unit
    // (qemu: frexp(val / (1000.0 / 1024.0)), exponent - 1, divided by 10).
    let scaled = value as f64 / (1000.0 / 1024.0);
    let exp = if scaled < 1.0 {
        0
    } else {
        // frexp's exponent: floor(log2(x)) + 1.
        scaled.log2().floor() as i32 + 1
    };
    let i = (((exp - 1).max(0)) / 10).min(6) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}B", format_g3(value as f64 / div), SUFFIXES[i])
}

/// C's `%0.3g`.
fn format_g3(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    // The exponent after rounding to three significant digits.
    let sci = format!("{x:.2e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let m = strip_zeros(mantissa);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", exp.abs());
    }
    let decimals = (2 - exp).max(0) as usize;
    strip_zeros(&format!("{x:.decimals$}"))
}

fn strip_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_qemu_img() {
        for (s, v) in [
            ("0", 0),
            ("512", 512),
            ("1b", 1),
            ("1k", 1024),
            ("1K", 1024),
            ("64M", 64 << 20),
            ("1G", 1 << 30),
            ("2T", 2 << 40),
            ("1.5k", 1536),
            ("0.5G", 512 << 20),
            ("0x1000", 4096),
            ("0x10k", 16 << 10),
        ] {
            assert_eq!(parse_size(s).unwrap(), v, "{s}");
        }
        for s in ["", "k", "1Q", "1kk", "-1", "1.5", "1.k", "x", "16E", "1.5b"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn prints_like_qemu_img() {
        for (v, s) in [
            (0, "0 B"),
            (512, "512 B"),
            (999, "999 B"),
            (1000, "0.977 KiB"),
            (4096, "4 KiB"),
            (197120, "192 KiB"),
            (1 << 20, "1 MiB"),
            (1 << 30, "1 GiB"),
            ((1 << 30) + (1 << 29), "1.5 GiB"),
            (10 << 40, "10 TiB"),
            (1023 << 10, "0.999 MiB"),
        ] {
            assert_eq!(size_to_str(v), s, "{v}");
        }
    }
}
