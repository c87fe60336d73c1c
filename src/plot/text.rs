//! Text in the picture: widths estimated from the font's metrics, cutting to fit, and
//! escaping for XML.
//!
//! Widths come from DejaVu Sans' advance widths (the font the PNG embeds and the SVG
//! names first), so that the layout can fit margins to tick labels and cut long run
//! names in the legend without rendering any text. A browser that substitutes another
//! sans draws slightly different widths: a cut label then ends a little short or long.
//!
//! Escaping is ours to get right because the SVG is written by hand: every piece of text
//! that can come from a user (run names, the title) goes through [`push_text`].

/// DejaVu Sans advance widths of ASCII 32..=126, in thousandths of an em (read from the
/// font's `hmtx` table; 2048 units per em).
const ADVANCE: [u16; 95] = [
    318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, 636, 636, 636,
    636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, 1000, 684, 686, 698, 770, 632,
    575, 775, 752, 295, 295, 656, 557, 863, 748, 787, 603, 787, 695, 635, 611, 732, 684, 989, 685,
    611, 685, 390, 337, 390, 838, 500, 500, 613, 635, 550, 635, 615, 352, 635, 634, 278, 278, 579,
    278, 974, 634, 612, 635, 635, 411, 521, 392, 634, 592, 818, 592, 592, 525, 636, 337, 636, 838,
];

/// The width of `s` in pixels at font size `size`, as DejaVu Sans sets it (no kerning;
/// characters outside ASCII are guessed).
pub(super) fn text_width(s: &str, size: f64) -> f64 {
    let milli: u32 = s
        .chars()
        .map(|c| match c {
            ' '..='~' => u32::from(ADVANCE[c as usize - 32]),
            '·' => 318,
            '…' => 1000,
            c if c >= '\u{2E80}' => 1000, // CJK and other wide scripts
            _ => 640,
        })
        .sum();
    f64::from(milli) / 1000.0 * size
}

/// `s`, cut and ended with `…` where it is wider than `max` pixels.
pub(super) fn fit(s: &str, size: f64, max: f64) -> String {
    if text_width(s, size) <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = text_width("…", size);
    for c in s.chars() {
        w += text_width(c.encode_utf8(&mut [0; 4]), size);
        if w > max {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// Appends `s` escaped for XML text and attribute values. Characters XML 1.0 forbids
/// even when escaped (most control characters) become U+FFFD, so a hostile run name
/// cannot make the document invalid.
pub(super) fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_width_follows_the_font_metrics() {
        assert_eq!(text_width("0", 10.0), 6.36);
        assert!(text_width("WWW", 12.0) > text_width("iii", 12.0) * 2.0);
        assert_eq!(fit("short", 12.0, 100.0), "short");
        let cut = fit("a long label that will not fit", 12.0, 60.0);
        assert!(
            cut.ends_with('…') && text_width(&cut, 12.0) <= 60.0,
            "{cut}"
        );
    }

    #[test]
    fn escaping_leaves_no_markup_and_no_forbidden_characters() {
        let mut out = String::new();
        push_text(&mut out, "<a href='x'>\"&\"</a>\u{0}\u{1b}\tok\u{FFFF}");
        assert_eq!(
            out,
            "&lt;a href=&apos;x&apos;&gt;&quot;&amp;&quot;&lt;/a&gt;\u{FFFD}\u{FFFD} ok\u{FFFD}"
        );
    }
}
