//! Generation parameters inside encoded images, as A1111's `save_image_with_geninfo` (`modules/images.py`) writes
//! them: PNG text chunks (Pillow's `PngInfo.add_text`: `tEXt` when the text is Latin-1, else an uncompressed `iTXt`)
//! and, for JPEG and WebP, an EXIF `UserComment` in piexif's form (`piexif.dump({"Exif": {UserComment:
//! piexif.helper.UserComment.dump(text, encoding="unicode")}})`: a big-endian TIFF, the comment `UNICODE\0` +
//! UTF-16BE).
//!
//! Layer: image. What the text says is [`crate::protocol::infotext`]'s business.

/// One PNG text chunk to write: keyword and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextChunk<'a> {
    /// The keyword (1–79 Latin-1 bytes), e.g. `parameters`.
    pub keyword: &'a str,
    /// The text, any Unicode.
    pub text: &'a str,
}

/// Whether `text` fits a `tEXt` chunk (Latin-1); other text goes to an `iTXt` chunk, as Pillow's `add_text` does.
pub fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| u32::from(c) <= 0xFF)
}

/// The largest TIFF block a JPEG EXIF segment carries: an APP1 segment holds at most 65533 bytes after its length,
/// 6 of them the `Exif\0\0` header.
pub const MAX_JPEG_EXIF: usize = 65533 - 6;

/// EXIF `UserComment` (tag 0x9286, type UNDEFINED) character code for UTF-16 text (EXIF 2.3, table 9).
const UNICODE_PREFIX: &[u8; 8] = b"UNICODE\0";

/// A TIFF block holding only an EXIF IFD with a `UserComment` of `text` (what `piexif.dump` writes for that dict):
/// header `MM\0*` + offset 8; IFD0 with one entry, the Exif IFD pointer (0x8769, LONG); the Exif IFD with one
/// entry, `UserComment` (0x9286, UNDEFINED, `UNICODE\0` + UTF-16BE) pointing just past itself.
pub fn exif_user_comment(text: &str) -> Vec<u8> {
    const IFD0: u32 = 8;
    const IFD_LEN: u32 = 2 + 12 + 4; // entry count, one 12-byte entry, next-IFD offset
    const EXIF_IFD: u32 = IFD0 + IFD_LEN;
    const DATA: u32 = EXIF_IFD + IFD_LEN;
    let mut comment = UNICODE_PREFIX.to_vec();
    comment.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
    let mut tiff = Vec::with_capacity(DATA as usize + comment.len());
    tiff.extend_from_slice(b"MM\0\x2A");
    tiff.extend_from_slice(&IFD0.to_be_bytes());
    let mut ifd = |tag: u16, kind: u16, count: u32, value: u32| {
        tiff.extend_from_slice(&1u16.to_be_bytes());
        tiff.extend_from_slice(&tag.to_be_bytes());
        tiff.extend_from_slice(&kind.to_be_bytes());
        tiff.extend_from_slice(&count.to_be_bytes());
        tiff.extend_from_slice(&value.to_be_bytes());
        tiff.extend_from_slice(&0u32.to_be_bytes());
    };
    ifd(0x8769, 4, 1, EXIF_IFD); // ExifIFDPointer, LONG
                                 // The comment is at least 8 bytes, so it is stored at an offset, never inline. A comment over 4 GiB cannot
                                 // come from a request (`max_request_bytes`).
    ifd(0x9286, 7, u32::try_from(comment.len()).unwrap_or(u32::MAX), DATA); // UserComment, UNDEFINED
    tiff.extend_from_slice(&comment);
    tiff
}

/// The text of an EXIF block's `UserComment` written as [`exif_user_comment`] writes it (big- or little-endian
/// TIFF, `UNICODE`, `ASCII` or undefined character code), as A1111's reader (`piexif.load` +
/// `UserComment.load`) gets it; `None` when there is none. For tests and tools.
pub fn read_user_comment(exif: &[u8]) -> Option<String> {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let big = match tiff.get(..2)? {
        b"MM" => true,
        b"II" => false,
        _ => return None,
    };
    let u16_at = |o: usize| {
        tiff.get(o..o + 2)
            .map(|b| if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) })
    };
    let u32_at = |o: usize| {
        tiff.get(o..o + 4).map(|b| {
            let b = [b[0], b[1], b[2], b[3]];
            if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        })
    };
    let find = |ifd: usize, tag: u16| -> Option<(u32, usize)> {
        let n = usize::from(u16_at(ifd)?);
        (0..n).map(|i| ifd + 2 + 12 * i).find(|&e| u16_at(e) == Some(tag)).and_then(|e| Some((u32_at(e + 4)?, e + 8)))
    };
    let (_, pointer) = find(u32_at(4)? as usize, 0x8769)?;
    let (count, value) = find(u32_at(pointer)? as usize, 0x9286)?;
    let count = count as usize;
    let start = if count <= 4 { value } else { u32_at(value)? as usize };
    let comment = tiff.get(start..start.checked_add(count)?)?;
    let (code, body) = comment.split_at_checked(8)?;
    match code {
        b"UNICODE\0" => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| if big { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_le_bytes([c[0], c[1]]) })
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        _ => Some(String::from_utf8_lossy(body).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_user_comment_is_piexifs_layout() {
        let tiff = exif_user_comment("a");
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &b"MM\0\x2A\0\0\0\x08"[..],
            &[0, 1, 0x87, 0x69, 0, 4, 0, 0, 0, 1, 0, 0, 0, 26, 0, 0, 0, 0],
            &[0, 1, 0x92, 0x86, 0, 7, 0, 0, 0, 10, 0, 0, 0, 44, 0, 0, 0, 0],
            b"UNICODE\0", &[0, b'a'],
        ]
        .concat();
        assert_eq!(tiff, expected);
    }

    #[test]
    fn user_comment_reads_back_any_unicode() {
        let text = "猫, \"cat\" 🐈\nSteps: 30";
        assert_eq!(read_user_comment(&exif_user_comment(text)).as_deref(), Some(text));
        let mut with_header = b"Exif\0\0".to_vec();
        with_header.extend(exif_user_comment(""));
        assert_eq!(read_user_comment(&with_header).as_deref(), Some(""));
        assert_eq!(read_user_comment(b"garbage"), None);
    }

    #[test]
    fn latin1_is_what_a_text_chunk_holds() {
        assert!(is_latin1("café, naïve ×2"));
        assert!(!is_latin1("猫"));
        assert!(!is_latin1("€"), "Windows-1252's euro is not Latin-1");
    }
}
