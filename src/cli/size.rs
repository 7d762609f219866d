//! Byte counts as people type and read them on the command line: `500`, `10M`, `1.5G`, `2GB`,
//! `2GiB`, all in powers of 1024, the way disks and `ls -h` count.

/// Parses a byte count: a whole number of bytes, or a number with a `K`, `M`, `G` or `T` suffix
/// (`KB` and `KiB`, in any case, mean the same as `K`). With a suffix the number may have a
/// fraction (`1.5G`), rounded down to whole bytes. Zero is refused: no file fits in it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HINT: &str = "a number of bytes, or one with a K, M, G or T suffix such as 500M or 2G";
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("expected {HINT}")),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    // 30 digits keep every product below u128::MAX; anything that long is too large anyway.
    if (whole.is_empty() && fraction.is_empty()) || !digits(fraction) || whole.len() > 30 || fraction.len() > 30 {
        return Err(format!("expected {HINT}"));
    }
    if shift == 0 && !fraction.is_empty() {
        return Err("a number of bytes is a whole number (or give a unit: 1.5G)".into());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| format!("expected {HINT}"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| format!("expected {HINT}"))?
    };
    let bytes = (whole << shift) + ((fraction << shift) / scale);
    match u64::try_from(bytes) {
        Ok(0) => Err("must be at least 1 byte".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("too large".into()),
    }
}

/// A byte count in powers of 1024, the way `parse_size` reads it: `700 B`, `10 MiB`, `1.5 GiB`.
pub fn binary_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::{binary_size, parse_size};

    #[test]
    fn sizes_are_bytes_or_powers_of_1024() {
        let cases: &[(&str, u64)] = &[
            ("1", 1),
            ("500", 500),
            ("500B", 500),
            ("1K", 1024),
            ("1k", 1024),
            ("10M", 10 << 20),
            ("10MB", 10 << 20),
            ("10MiB", 10 << 20),
            ("10mib", 10 << 20),
            ("2G", 2 << 30),
            ("2GB", 2 << 30),
            ("2GiB", 2 << 30),
            ("2 G", 2 << 30),
            (" 2G ", 2 << 30),
            ("1T", 1 << 40),
            ("1.5G", 3 << 29),
            ("0.5K", 512),
            (".5K", 512),
            ("1.", 1),
            ("0.1K", 102),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_size(input), Ok(want), "{input}");
        }
        assert_eq!(parse_size("16777215T"), Ok(16_777_215u64 << 40), "the largest whole T");
    }

    #[test]
    fn bad_sizes_are_refused_with_a_hint() {
        for input in [
            "",
            " ",
            "G",
            ".",
            "2X",
            "2GG",
            "2 GiBs",
            "-5",
            "1.2.3",
            "1.5",
            "0",
            "0G",
            "0.0001K",
            "16777216T",
            "99999999999999999999999999999999999",
        ] {
            let err = parse_size(input).expect_err(input);
            assert!(
                err.contains("500M") || err.contains("whole") || err.contains("at least") || err.contains("too large"),
                "{input}: {err}"
            );
        }
        assert_eq!(
            parse_size("1.5"),
            Err("a number of bytes is a whole number (or give a unit: 1.5G)".into())
        );
        assert_eq!(parse_size("16777216T"), Err("too large".into()));
        assert_eq!(parse_size("0"), Err("must be at least 1 byte".into()));
    }

    #[test]
    fn sizes_print_in_the_units_they_are_typed_in() {
        assert_eq!(binary_size(700), "700 B");
        assert_eq!(binary_size(1024), "1 KiB");
        assert_eq!(binary_size(10 << 20), "10 MiB");
        assert_eq!(binary_size(3 << 29), "1.5 GiB");
        assert_eq!(binary_size(2 << 40), "2 TiB");
        assert_eq!(binary_size(5000 << 40), "5000 TiB");
    }
}
