//! Untrusted text made inert for a terminal.
//!
//! Command names, mount paths, container names and anything else a process
//! or a saved trace can set are written to the operator's terminal through
//! this module, so that none of them can move the cursor, clear the screen,
//! set the title or the clipboard (CSI, OSC), reorder what is shown (bidi
//! overrides) or hide characters. What is escaped, and how (visibly, in
//! the manner of `ls -b`):
//!
//! | what | shown as |
//! |---|---|
//! | tab, newline, carriage return | `\t`, `\n`, `\r` |
//! | ESC (0x1b) | `\e` |
//! | every other C0 control (0x00–0x1f), DEL (0x7f) | `\xNN` (`\x07`, `\x7f`) |
//! | a byte that is not UTF-8 (raw bytes only) | `\xNN`, per byte |
//! | C1 controls U+0080–U+009F | `\u{NN}` (`\u{9b}`) |
//! | bidi marks, embeddings, overrides, isolates (U+061C, U+200E/F, U+202A–U+202E, U+2066–U+2069) | `\u{NNNN}` |
//! | invisible and separating format characters: zero-width U+200B–U+200D, U+2028/U+2029, U+2060–U+2065, U+206A–U+206F, U+180E, U+FEFF, U+FFF9–U+FFFB, tags U+E0000–U+E007F | `\u{NNNN}` |
//!
//! Everything else, printable ASCII included, is passed through unchanged
//! (a backslash is not doubled: names such as systemd's `\x2d` read as
//! they are; the JSON output is the exact form). Text made only of
//! printable ASCII, nearly every name, costs one scan and one copy.

use std::{borrow::Cow, fmt, path::Path};

/// True when every byte is printable ASCII (0x20–0x7e): nothing to escape.
#[inline]
pub fn is_plain(s: &[u8]) -> bool {
    // Without an early exit the loop vectorises: names are short, and
    // nearly all plain.
    s.iter()
        .fold(true, |plain, &b| plain & (b.wrapping_sub(0x20) < 0x5f))
}

/// Whether `c` is shown escaped (see the table above).
#[inline]
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f'
        // C1 controls (0x9b is CSI, 0x9d OSC, 0x85 NEL).
        | '\u{80}'..='\u{9f}'
        // ARABIC LETTER MARK, MONGOLIAN VOWEL SEPARATOR.
        | '\u{61c}' | '\u{180e}'
        // Zero-width space, non-joiner, joiner; LRM, RLM.
        | '\u{200b}'..='\u{200f}'
        // Line and paragraph separators; bidi embeddings and overrides.
        | '\u{2028}'..='\u{202e}'
        // Word joiner, invisible operators, bidi isolates, deprecated format.
        | '\u{2060}'..='\u{206f}'
        // Zero-width no-break space (BOM); interlinear annotations.
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        // Tags: invisible copies of ASCII.
        | '\u{e0000}'..='\u{e007f}')
}

fn write_escape(w: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\t' => w.write_str("\\t"),
        '\n' => w.write_str("\\n"),
        '\r' => w.write_str("\\r"),
        '\x1b' => w.write_str("\\e"),
        '\0'..='\x7f' => write!(w, "\\x{:02x}", c as u32),
        _ => write!(w, "\\u{{{:x}}}", c as u32),
    }
}

/// Writes `s` escaped to `w`: runs that need nothing are written whole.
pub fn write_str(w: &mut impl fmt::Write, s: &str) -> fmt::Result {
    if is_plain(s.as_bytes()) {
        return w.write_str(s);
    }
    let mut from = 0;
    for (i, c) in s.char_indices() {
        if needs_escape(c) {
            w.write_str(&s[from..i])?;
            write_escape(w, c)?;
            from = i + c.len_utf8();
        }
    }
    w.write_str(&s[from..])
}

/// Writes the bytes `b` escaped to `w`: valid UTF-8 as [`write_str`] does,
/// each byte that is not part of a valid character as `\xNN`.
pub fn write_bytes(w: &mut impl fmt::Write, b: &[u8]) -> fmt::Result {
    for chunk in b.utf8_chunks() {
        write_str(w, chunk.valid())?;
        for byte in chunk.invalid() {
            write!(w, "\\x{byte:02x}")?;
        }
    }
    Ok(())
}

/// Appends `s` to `out`, escaped: the timeline's hot path (no allocation).
#[inline]
pub fn push(out: &mut String, s: &str) {
    if is_plain(s.as_bytes()) {
        out.push_str(s);
    } else {
        // Writing to a String cannot fail.
        let _ = write_str(out, s);
    }
}

/// `s` escaped; borrowed when nothing needed escaping.
pub fn escaped(s: &str) -> Cow<'_, str> {
    if is_plain(s.as_bytes()) || !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let _ = write_str(&mut out, s);
    Cow::Owned(out)
}

/// The bytes `b` escaped (see [`write_bytes`]).
pub fn escaped_bytes(b: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(b) {
        Ok(s) => escaped(s),
        Err(_) => {
            let mut out = String::with_capacity(b.len() + 8);
            let _ = write_bytes(&mut out, b);
            Cow::Owned(out)
        }
    }
}

/// A path escaped for a message: its bytes as they are, not lossily
/// converted, so a byte that is not UTF-8 shows as `\xNN`.
pub fn path(p: &Path) -> Cow<'_, str> {
    use std::os::unix::ffi::OsStrExt as _;
    escaped_bytes(p.as_os_str().as_bytes())
}

/// `s`, escaped when formatted: `format!("{}", Escaped(name))`. Width and
/// alignment (`{:<16}`) count the escaped form.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() && f.precision().is_none() {
            write_str(f, self.0)
        } else {
            f.pad(&escaped(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_and_ordinary_unicode_pass_through() {
        for s in [
            "",
            "unshare",
            "runc:[1:CHILD]",
            "/run/netns/a b",
            r"back\slash \x2d",
            "café ☃ 日本語 \u{fffd}",
        ] {
            assert_eq!(escaped(s), s);
            assert!(matches!(escaped(s), Cow::Borrowed(_)), "{s}");
            let mut out = String::from(">");
            push(&mut out, s);
            assert_eq!(out, format!(">{s}"));
        }
    }

    #[test]
    fn controls_are_shown_not_obeyed() {
        let cases = [
            ("\x1b[2J\x1b]0;pwned\x07", r"\e[2J\e]0;pwned\x07"),
            ("a\tb\nc\rd", r"a\tb\nc\rd"),
            ("\0\x01\x1f\x7f", r"\x00\x01\x1f\x7f"),
            ("\x1b[1A\x1b[2K", r"\e[1A\e[2K"),
            // C1: CSI, OSC, NEL.
            ("x\u{9b}2Jy\u{9d}0;t\u{85}", r"x\u{9b}2Jy\u{9d}0;t\u{85}"),
            // Bidi override and isolates, zero-width, separators, BOM, tags.
            ("evil\u{202e}txt.sh", r"evil\u{202e}txt.sh"),
            (
                "\u{2066}a\u{2069}\u{200b}\u{2028}\u{2029}",
                r"\u{2066}a\u{2069}\u{200b}\u{2028}\u{2029}",
            ),
            ("\u{feff}\u{e0041}é", r"\u{feff}\u{e0041}é"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escaped(raw), shown, "{raw:?}");
            let mut out = String::new();
            push(&mut out, raw);
            assert_eq!(out, shown);
            assert_eq!(Escaped(raw).to_string(), shown);
        }
    }

    #[test]
    fn invalid_utf8_bytes_are_shown_as_hex() {
        assert_eq!(escaped_bytes(b"ok"), "ok");
        assert_eq!(escaped_bytes(b"a\xffb\xc3"), r"a\xffb\xc3");
        assert_eq!(escaped_bytes("é\x1b".as_bytes()), r"é\e");
        assert_eq!(escaped_bytes(b"\xc2\x9b"), r"\u{9b}");
        use std::os::unix::ffi::OsStrExt as _;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\x1b[2J\xfe"));
        assert_eq!(path(p), r"/tmp/\e[2J\xfe");
    }

    #[test]
    fn width_counts_the_escaped_form() {
        assert_eq!(format!("[{:<6}]", Escaped("a\x1b")), r"[a\e   ]");
        assert_eq!(format!("[{:<6}]", Escaped("ab")), "[ab    ]");
        assert_eq!(format!("[{}]", Escaped("a\nb")), r"[a\nb]");
    }

    /// What no escaped text may hold: a C0 control, DEL, a C1 control, or a
    /// character that reorders or hides text.
    /// Told independently of [`needs_escape`]: what Unicode calls a control
    /// (C0, DEL, C1), and the bidi and invisible characters listed by hand.
    fn inert(out: &str) -> Result<(), String> {
        let bad = |c: char| {
            c.is_control()
                || matches!(
                    c,
                    '\u{61c}'
                        | '\u{200b}'..='\u{200f}'
                        | '\u{2028}'..='\u{202e}'
                        | '\u{2066}'..='\u{2069}'
                        | '\u{feff}'
                )
        };
        match out.chars().find(|&c| bad(c)) {
            Some(c) => Err(format!("{c:?} left raw in {out:?}")),
            None => Ok(()),
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        use proptest::char::range;

        use super::*;

        /// Any characters, weighted towards the ranges that matter here
        /// (`any::<String>()` alone draws no control character).
        fn text() -> impl Strategy<Value = String> {
            let c = prop_oneof![
                any::<char>(),
                range('\0', '\u{ff}'),
                range(' ', '~'),
                range('\u{2000}', '\u{206f}'),
                range('\u{fe00}', '\u{ffff}'),
                range('\u{e0000}', '\u{e007f}'),
            ];
            proptest::collection::vec(c, 0..40).prop_map(|v| v.into_iter().collect())
        }

        proptest! {
            #[test]
            fn any_string_is_inert(s in text()) {
                let out = escaped(&s);
                prop_assert!(inert(&out).is_ok(), "{:?}", inert(&out));
                prop_assert!(!out.bytes().any(|b| b < 0x20 || b == 0x7f));
                let mut pushed = String::from("x");
                push(&mut pushed, &s);
                prop_assert_eq!(&pushed[1..], &*out);
                prop_assert_eq!(Escaped(&s).to_string(), out.to_string());
            }

            #[test]
            fn any_bytes_are_inert(b in proptest::collection::vec(any::<u8>(), 0..64)) {
                let out = escaped_bytes(&b);
                prop_assert!(inert(&out).is_ok(), "{:?}", inert(&out));
                prop_assert!(!out.bytes().any(|b| b < 0x20 || b == 0x7f));
                // C1 as UTF-8 (0xc2 0x80..0x9f) never reaches the output raw.
                prop_assert!(!out.as_bytes().windows(2).any(|w| w[0] == 0xc2 && (0x80..0xa0).contains(&w[1])));
            }

            #[test]
            fn printable_ascii_is_unchanged(s in "[ -~]{0,40}") {
                prop_assert_eq!(&*escaped(&s), s.as_str());
                prop_assert_eq!(&*escaped_bytes(s.as_bytes()), s.as_str());
            }

            #[test]
            fn printable_ascii_runs_survive_among_anything(s in text()) {
                // Every run of printable ASCII is in the output, unchanged
                // and in order.
                let out = escaped(&s);
                let mut rest = out.as_ref();
                for run in s.split(|c: char| !(' '..='~').contains(&c)).filter(|r| !r.is_empty()) {
                    let at = rest.find(run);
                    prop_assert!(at.is_some(), "{:?} lost from {:?}", run, out);
                    rest = &rest[at.unwrap() + run.len()..];
                }
            }
        }
    }
}
