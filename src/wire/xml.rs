//! XML attribute and text escaping for the markup the relay writes (TwiML, TeXML).

/// Appends `s` to `out` escaped for an XML attribute value or text. Tab, LF and CR become
/// character references, so they survive attribute-value normalisation (an XML processor
/// reads a literal one as a space; XML 1.0 §3.3.3); characters XML 1.0 does not allow at all
/// (§2.2: other C0 controls, U+FFFE, U+FFFF) are dropped.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// `s` escaped (see [`escape_into`]).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_metacharacters_and_keeps_whitespace() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(
            escape("line 1\nline 2\r\n\tx\u{1}\u{FFFE}\u{FFFF}\u{FFFD}"),
            "line 1&#10;line 2&#13;&#10;&#9;x\u{FFFD}"
        );
    }
}
