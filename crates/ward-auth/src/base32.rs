//! RFC 4648 base32 without padding, as authenticator apps expect TOTP
//! secrets.

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Encodes `data` as upper-case base32 without `=` padding.
pub(crate) fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(symbol(buffer >> bits));
        }
    }
    if bits > 0 {
        out.push(symbol(buffer << (5 - bits)));
    }
    out
}

/// Decodes base32, ignoring case, spaces and trailing `=` padding. Returns
/// `None` for any other character or for leftover bits that are not zero.
pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for ch in text.trim_end_matches('=').chars().filter(|c| *c != ' ') {
        let upper = ch.to_ascii_uppercase();
        let value = ALPHABET.iter().position(|&a| char::from(a) == upper)?;
        buffer = (buffer << 5) | u32::try_from(value).ok()?;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
        }
        buffer &= (1 << bits) - 1;
    }
    if buffer != 0 {
        return None;
    }
    Some(out)
}

fn symbol(value: u32) -> char {
    let index = usize::try_from(value & 31).unwrap_or(0);
    ALPHABET.get(index).map_or('A', |&b| char::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_round_trip() {
        let cases = [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn decode_accepts_padding_and_lower_case() {
        assert_eq!(decode("mzxw6===").as_deref(), Some(&b"foo"[..]));
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert_eq!(decode("MZXW1"), None);
        assert_eq!(decode("MZ!W6"), None);
        // "MZ" followed by a non-zero trailing bit pattern.
        assert_eq!(decode("MZ7"), None);
    }
}
