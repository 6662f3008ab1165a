//! Human units on the command line: sizes (`2GiB`, `512M`, `4096`) and rates
//! (`50MiB/s`, `400Mbit/s`, `10MB/s`, `512KiB/s`).
//!
//! Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`, and the bare `K`, `M`, `G`, `T`
//! in either case, as `dd` and `qemu-img` users type them) are powers of 1024; SI suffixes
//! (`kB`, `MB`, `GB`, `TB`) are powers of 1000; `bit`/`b` rates are divided by 8.

use crate::exit::usage;

/// Parse a byte size such as `2GiB`, `64M`, `1.5GB` or `4096`.
pub fn parse_size(text: &str) -> crate::Result<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        usage(format!(
            "`{text}` is not a size: expected a number with an optional unit such as 2GiB, 64MiB, 4096"
        ))
    })?;
    // The binary forms are unambiguous in any case (`34mib`, `2GIB`): said "either case".
    let binary = unit.trim().to_ascii_lowercase();
    let unit = match binary.as_str() {
        "kib" | "ki" => "KiB",
        "mib" | "mi" => "MiB",
        "gib" | "gi" => "GiB",
        "tib" | "ti" => "TiB",
        _ => unit,
    };
    let mult = match unit.trim() {
        "" | "B" | "b" => 1u64,
        // Lower-case single letters are binary like their capitals (`dd`
        // takes `1m`); only the two-letter `kB`..`TB` forms are decimal.
        "K" | "k" | "KiB" | "Ki" => 1 << 10,
        "M" | "m" | "MiB" | "Mi" => 1 << 20,
        "G" | "g" | "GiB" | "Gi" => 1 << 30,
        "T" | "t" | "TiB" | "Ti" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(usage(format!(
                "unknown size unit `{other}` in `{text}`: use B, KiB, MiB, GiB, TiB or K, M, G, T \
             (either case; powers of 1024), or kB, MB, GB, TB (powers of 1000)"
            )))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(usage(format!("size `{text}` is out of range")));
    }
    Ok(bytes.round() as u64)
}

/// `2000000` as `2,000,000`, for sizes quoted back in messages.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The slowest rate a limit may be, in bytes per second.
pub const MIN_RATE: f64 = 1024.0;
/// The fastest rate a limit may be, in bytes per second (1 TiB/s).
pub const MAX_RATE: f64 = 1024.0 * 1024.0 * 1024.0 * 1024.0;

/// Parse a rate such as `50MiB/s`, `400Mbit/s`, `10MB/s`; returns bytes per second.
pub fn parse_rate(text: &str) -> crate::Result<f64> {
    let t = text.trim();
    let body = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (num, unit) = body.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        usage(format!(
            "`{text}` is not a rate: expected e.g. 50MiB/s, 400Mbit/s, 10MB/s, 512KiB/s"
        ))
    })?;
    // `KiB`..`TiB` and `Kibit`..`Gibit` are unambiguous in any case (`1MIB/s`, `1Mib/s`);
    // only the SI forms tell bytes (B) from bits (b) by case.
    let folded = unit.trim().to_ascii_lowercase();
    let unit = match folded.as_str() {
        "kib" => "KiB",
        "mib" => "MiB",
        "gib" => "GiB",
        "tib" => "TiB",
        "kibit" => "Kibit",
        "mibit" => "Mibit",
        "gibit" => "Gibit",
        _ => unit,
    };
    let per_sec = match unit.trim() {
        // A bare number once meant bytes per second: `--rate-limit 50` then
        // crawled at 50 B/s without a word. Rates need a unit.
        "" if value <= 0.0 => {
            return Err(usage(format!(
                "rate `{text}` must be a positive number with a unit, e.g. 50MiB/s or 10Mbit/s"
            )))
        }
        "" => {
            return Err(usage(format!(
                "rate `{text}` has no unit: write e.g. {num}MiB/s, {num}MB/s or {num}Mbit/s"
            )))
        }
        "B" => 1.0,
        // `mib/s` is as plain as `MiB/s` (no bit unit is spelled so); `mb` stays a megabit.
        "KiB" | "K" => 1024.0,
        "MiB" | "M" => 1024.0 * 1024.0,
        "GiB" | "G" => 1024.0 * 1024.0 * 1024.0,
        // The documented maximum is 1 TiB/s: its own unit is taken too.
        "TiB" | "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        // SI's lower-case k is a thousand (`K` alone is KiB, as `M` and `G` are MiB and GiB).
        "kB" | "KB" | "k" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "bit" | "b" => 1.0 / 8.0,
        "kbit" | "Kbit" | "kb" | "Kb" => 1e3 / 8.0,
        "Mbit" | "Mb" => 1e6 / 8.0,
        "Gbit" | "Gb" => 1e9 / 8.0,
        "Kibit" => 1024.0 / 8.0,
        "Mibit" => 1024.0 * 1024.0 / 8.0,
        "Gibit" => 1024.0 * 1024.0 * 1024.0 / 8.0,
        // `1KiB/s/s`: the unit it named is known, the `/s` is twice.
        other if other.ends_with("/s") || other.ends_with("ps") => {
            return Err(usage(format!(
                "rate `{text}` says per second twice: write e.g. 50MiB/s"
            )))
        }
        other => {
            return Err(usage(format!(
                "unknown rate unit `{other}` in `{text}`: use KiB/s (or K), MiB/s (M), GiB/s (G), TiB/s (T), \
                 kB/s (k), MB/s, GB/s, kbit/s, Mbit/s, Gbit/s (KiB..TiB in either case; in the \
                 others the case matters: MB is bytes, Mb bits)"
            )))
        }
    };
    let rate = value * per_sec;
    if !rate.is_finite() || rate <= 0.0 {
        return Err(usage(format!("rate `{text}` must be a positive number")));
    }
    // Above any disk or link: a slip of the unit or of the digits (2^64 B/s was taken, and
    // the plan said "about 0 s").
    if rate > MAX_RATE {
        return Err(usage(format!(
            "rate `{text}` is above 1 TiB/s, faster than any disk or link: check the number and \
             the unit, or leave --rate-limit out for no limit"
        )));
    }
    // Below this a 1 MiB chunk takes over 17 minutes: a slip of the unit
    // (`1B/s` for 1 MB/s), not a link anyone runs.
    if rate < MIN_RATE {
        return Err(usage(format!(
            "rate `{text}` is below 1 KiB/s, where 1 MiB of disk takes over 17 minutes: \
             check the unit (e.g. 1MB/s, 1Mbit/s)"
        )));
    }
    Ok(rate)
}

/// `n` with its noun in the number it takes: "1 chunk", "0 chunks", "2 chunks".
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Format a byte count for people: `1.50 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_noun_in_their_number() {
        assert_eq!(count(0, "chunk"), "0 chunks");
        assert_eq!(count(1, "chunk"), "1 chunk");
        assert_eq!(count(2, "record"), "2 records");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("3 MiB").unwrap(), 3 << 20);
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("GiB").is_err());
        // Every bare letter takes either case, as the message says.
        for (t, n) in [
            ("1m", 1u64 << 20),
            ("64k", 64 << 10),
            ("2g", 2 << 30),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_size(t).unwrap(), n, "{t}");
        }
        // So does every binary form (`--size 34mib` was refused by a message saying "either
        // case").
        for (t, n) in [("34mib", 34u64 << 20), ("2GIB", 2 << 30), ("1Ki", 1 << 10)] {
            assert_eq!(parse_size(t).unwrap(), n, "{t}");
        }
        assert!(parse_size("1mb")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        let m = parse_size("1q").unwrap_err().to_string();
        assert!(
            m.contains("either case") && m.contains("powers of 1000"),
            "{m}"
        );
        assert_eq!(group_digits(2_000_000), "2,000,000");
        assert_eq!(group_digits(512), "512");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("50MiB/s").unwrap(), 50.0 * 1048576.0);
        assert_eq!(parse_rate("8mib/s").unwrap(), 8.0 * 1048576.0);
        for t in ["1MIB/s", "1Mib/s", "1mIb/s"] {
            assert_eq!(parse_rate(t).unwrap(), 1048576.0, "{t}");
        }
        assert_eq!(parse_rate("8MIBIT/s").unwrap(), 1048576.0);
        // Bytes and bits stay apart by case where only the case tells them apart.
        assert_eq!(parse_rate("8Mb/s").unwrap(), 1e6);
        assert_eq!(parse_rate("400Mbit/s").unwrap(), 50e6);
        assert_eq!(parse_rate("10MB/s").unwrap(), 10e6);
        assert_eq!(parse_rate("512KiB/s").unwrap(), 512.0 * 1024.0);
        assert_eq!(parse_rate("1Gbps").unwrap(), 125e6);
        assert!(parse_rate("0MB/s").is_err());
        let zero = parse_rate("0").unwrap_err().to_string();
        assert!(
            zero.contains("positive") && !zero.contains("e.g. 0MiB/s"),
            "{zero}"
        );
        let slip = parse_rate("1B/s").unwrap_err().to_string();
        assert!(slip.contains("below 1 KiB/s"), "{slip}");
        assert_eq!(parse_rate("1KiB/s").unwrap(), 1024.0);
        // k is SI's thousand, K a KiB; `/s` twice and a rate past any link are named.
        assert_eq!(parse_rate("2k/s").unwrap(), 2e3);
        assert_eq!(parse_rate("2K/s").unwrap(), 2048.0);
        let twice = parse_rate("1KiB/s/s").unwrap_err().to_string();
        assert!(twice.contains("says per second twice"), "{twice}");
        let huge = parse_rate("18446744073709551616B/s")
            .unwrap_err()
            .to_string();
        assert!(huge.contains("above 1 TiB/s"), "{huge}");
        assert_eq!(parse_rate("1024GiB/s").unwrap(), MAX_RATE);
        assert_eq!(parse_rate("1TiB/s").unwrap(), MAX_RATE);
        assert_eq!(parse_rate("4096B/s").unwrap(), 4096.0);
        let bare = parse_rate("50").unwrap_err();
        assert_eq!(crate::exit::code_of(&bare), 2);
        assert!(bare.to_string().contains("50MiB/s"), "{bare}");
        assert_eq!(crate::exit::code_of(&parse_rate("fast").unwrap_err()), 2);
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
    }
}
