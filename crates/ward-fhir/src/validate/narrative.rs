//! Safety check of narrative XHTML (`Narrative.div`).
//!
//! The narrative is shown to users in browsers, so it must not carry active
//! content. This is a small scanner, not an HTML parser: it rejects the
//! elements and attributes that can run script or load foreign content, and
//! it errs on the side of rejecting, for example a `<script` inside an XML
//! comment.
//!
//! NOTE: well-formedness (balanced tags, valid entities) is not checked; a
//! narrative is only known to start and end with the required `div`.

/// Elements that run script, embed foreign content, submit data or change
/// how the page is loaded. The FHIR narrative rules (txt-1) allow only basic
/// formatting elements, links, images and tables.
const FORBIDDEN_ELEMENTS: &[&str] = &[
    "script", "iframe", "object", "embed", "form", "applet", "frame", "frameset", "base", "link",
    "meta",
];

/// URL schemes that run script when followed.
const SCRIPT_SCHEMES: &[&str] = &["javascript:", "vbscript:"];

/// The reason a narrative was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NarrativeError {
    /// The narrative does not start with the XHTML `div` or end with `</div>`.
    NotXhtmlDiv,
    /// A forbidden element such as `<script>` or `<iframe>`.
    ForbiddenElement,
    /// An `on*` event handler attribute.
    EventHandler,
    /// A `javascript:` or `vbscript:` URL.
    ScriptUrl,
    /// A CSS `expression(...)` in a `style` attribute or element.
    StyleExpression,
}

impl NarrativeError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::NotXhtmlDiv => {
                "the narrative must be an XHTML div: start with \
                 <div xmlns=\"http://www.w3.org/1999/xhtml\"> and end with </div>"
            }
            Self::ForbiddenElement => {
                "the narrative contains a forbidden element (script, iframe, object, embed, \
                 form, applet, frame, frameset, base, link or meta)"
            }
            Self::EventHandler => {
                "the narrative contains an event handler attribute (on...); remove it"
            }
            Self::ScriptUrl => "the narrative contains a javascript: or vbscript: URL; remove it",
            Self::StyleExpression => {
                "the narrative contains a CSS expression() in a style; remove it"
            }
        }
    }
}

/// Checks that `div` is an XHTML div free of active content.
pub(crate) fn check_narrative(div: &str) -> Result<(), NarrativeError> {
    check_envelope(div)?;
    let lower = div.to_ascii_lowercase();
    check_forbidden_elements(&lower)?;
    check_style_elements(&lower)?;
    check_tags(&lower)
}

fn check_envelope(div: &str) -> Result<(), NarrativeError> {
    let trimmed = div.trim();
    let rest = trimmed
        .strip_prefix("<div xmlns=\"http://www.w3.org/1999/xhtml\"")
        .or_else(|| trimmed.strip_prefix("<div xmlns='http://www.w3.org/1999/xhtml'"))
        .ok_or(NarrativeError::NotXhtmlDiv)?;
    let next = rest.chars().next();
    let opens = matches!(next, Some('>' | '/')) || next.is_some_and(char::is_whitespace);
    let self_closed = rest.trim_end().ends_with("/>") && !rest.contains('<');
    if !opens || !(rest.ends_with("</div>") || self_closed) {
        return Err(NarrativeError::NotXhtmlDiv);
    }
    Ok(())
}

/// Rejects a forbidden element name after any `<` or `</`, anywhere in the
/// text, comments and CDATA included.
fn check_forbidden_elements(lower: &str) -> Result<(), NarrativeError> {
    for (index, _) in lower.match_indices('<') {
        let after = lower.get(index + 1..).unwrap_or("");
        let after = after.strip_prefix('/').unwrap_or(after);
        let name_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let name = after.get(..name_len).unwrap_or("");
        if FORBIDDEN_ELEMENTS.contains(&name) {
            return Err(NarrativeError::ForbiddenElement);
        }
    }
    Ok(())
}

/// Rejects `<style>` elements whose content contains `expression(` or a script
/// URL.
fn check_style_elements(lower: &str) -> Result<(), NarrativeError> {
    let mut rest = lower;
    while let Some(start) = rest.find("<style") {
        let body = rest.get(start + 6..).unwrap_or("");
        let end = body.find("</style").unwrap_or(body.len());
        let css = normalize_css(body.get(..end).unwrap_or(""));
        if css.contains("expression(") {
            return Err(NarrativeError::StyleExpression);
        }
        if SCRIPT_SCHEMES.iter().any(|s| css.contains(s)) {
            return Err(NarrativeError::ScriptUrl);
        }
        rest = body.get(end..).unwrap_or("");
    }
    Ok(())
}

/// Walks every start tag and checks its attributes.
fn check_tags(lower: &str) -> Result<(), NarrativeError> {
    let bytes = lower.as_bytes();
    let mut pos = 0;
    while let Some(offset) = lower.get(pos..).and_then(|s| s.find('<')) {
        pos += offset + 1;
        if bytes.get(pos).is_some_and(u8::is_ascii_alphabetic) {
            pos = check_attributes(lower, pos)?;
        }
    }
    Ok(())
}

/// Checks the attributes of the tag whose name starts at `pos`, and returns
/// the position after the tag.
fn check_attributes(lower: &str, mut pos: usize) -> Result<usize, NarrativeError> {
    let bytes = lower.as_bytes();
    let at = |i: usize| bytes.get(i).copied();

    // The tag name.
    while at(pos).is_some_and(|b| !b.is_ascii_whitespace() && b != b'>' && b != b'/') {
        pos += 1;
    }
    loop {
        while at(pos).is_some_and(|b| b.is_ascii_whitespace() || b == b'/') {
            pos += 1;
        }
        match at(pos) {
            None => return Ok(pos),
            Some(b'>') => return Ok(pos + 1),
            Some(_) => {}
        }

        let name_start = pos;
        while at(pos).is_some_and(|b| !b.is_ascii_whitespace() && !matches!(b, b'=' | b'>' | b'/'))
        {
            pos += 1;
        }
        let name = lower.get(name_start..pos).unwrap_or("");
        while at(pos).is_some_and(|b| b.is_ascii_whitespace()) {
            pos += 1;
        }
        let mut value = "";
        if at(pos) == Some(b'=') {
            pos += 1;
            while at(pos).is_some_and(|b| b.is_ascii_whitespace()) {
                pos += 1;
            }
            let (start, end, next) = match at(pos) {
                Some(quote @ (b'"' | b'\'')) => {
                    let start = pos + 1;
                    let end = lower
                        .get(start..)
                        .and_then(|s| s.find(char::from(quote)))
                        .map_or(lower.len(), |i| start + i);
                    (start, end, end + 1)
                }
                _ => {
                    let start = pos;
                    let mut end = pos;
                    while at(end).is_some_and(|b| !b.is_ascii_whitespace() && b != b'>') {
                        end += 1;
                    }
                    (start, end, end)
                }
            };
            value = lower.get(start..end).unwrap_or("");
            pos = next;
        }
        check_attribute(name, value)?;
    }
}

fn check_attribute(name: &str, value: &str) -> Result<(), NarrativeError> {
    // Any attribute name that starts with "on" after a prefix such as
    // "<img" glued on by malformed markup is still an event handler.
    let local = name.rsplit(['<', ':']).next().unwrap_or(name);
    if local.starts_with("on") {
        return Err(NarrativeError::EventHandler);
    }
    let decoded = decode_attribute(value);
    if SCRIPT_SCHEMES.iter().any(|s| decoded.contains(s)) {
        return Err(NarrativeError::ScriptUrl);
    }
    if local == "style" && normalize_css(&decoded).contains("expression(") {
        return Err(NarrativeError::StyleExpression);
    }
    Ok(())
}

/// Decodes character references and drops whitespace and control
/// characters, so `jav&#x09;ascript&#58;` reads as `javascript:`.
fn decode_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(c) = rest.chars().next() {
        if c == '&'
            && let Some((decoded, consumed)) = decode_reference(rest)
        {
            if let Some(d) = decoded.filter(|d| !d.is_whitespace() && !d.is_control()) {
                out.extend(d.to_lowercase());
            }
            rest = rest.get(consumed..).unwrap_or("");
            continue;
        }
        if !c.is_whitespace() && !c.is_control() {
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or("");
    }
    out
}

/// Decodes one character reference at the start of `text` (which starts
/// with `&`). Returns the character (`None` for a named reference it does
/// not know) and the number of bytes consumed.
fn decode_reference(text: &str) -> Option<(Option<char>, usize)> {
    let end = text.get(..40).unwrap_or(text).find(';');
    let body = text.get(1..end.unwrap_or(text.len().min(40)))?;
    let consumed = end.map_or(body.len() + 1, |e| e + 1);
    if let Some(number) = body.strip_prefix('#') {
        let digits: String = number
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == 'x')
            .collect();
        let code = match digits.strip_prefix('x') {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => digits.parse().ok()?,
        };
        // Without a `;`, only the digits are part of the reference.
        let used = if end.is_some() {
            consumed
        } else {
            2 + digits.len()
        };
        return Some((char::from_u32(code), used));
    }
    let named = match body {
        "colon" => ':',
        "tab" | "newline" => ' ',
        "lpar" => '(',
        "rpar" => ')',
        "sol" => '/',
        "amp" => '&',
        _ => return None,
    };
    Some((Some(named), consumed))
}

/// Drops CSS comments and escapes, which can split `expression(`.
fn normalize_css(css: &str) -> String {
    let mut out = String::with_capacity(css.len());
    let mut rest = css;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after
                .find("*/")
                .and_then(|i| after.get(i + 2..))
                .unwrap_or("");
            continue;
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        if c != '\\' && !c.is_whitespace() {
            out.push(c);
        }
        rest = rest.get(c.len_utf8()..).unwrap_or("");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn div(body: &str) -> String {
        format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{body}</div>")
    }

    #[test]
    fn plain_narrative_passes() {
        let text = div(
            "<p style=\"color: red\">Hi <b>there</b>, see <a href=\"http://x.org/a?b=1&amp;c=2\">this</a></p>\
             <img src=\"data:image/png;base64,AAAA\" alt=\"x\"/><table><tr><td>1</td></tr></table>",
        );
        assert_eq!(check_narrative(&text), Ok(()));
        let attrs = "<div xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\"><p>x</p></div>";
        assert_eq!(check_narrative(attrs), Ok(()));
    }

    #[test]
    fn envelope_is_required() {
        assert_eq!(
            check_narrative("<p>x</p>"),
            Err(NarrativeError::NotXhtmlDiv)
        );
        assert_eq!(
            check_narrative("<div>no namespace</div>"),
            Err(NarrativeError::NotXhtmlDiv)
        );
        assert_eq!(
            check_narrative("<div xmlns=\"http://www.w3.org/1999/xhtml\">unclosed"),
            Err(NarrativeError::NotXhtmlDiv)
        );
        assert_eq!(
            check_narrative("<div xmlns=\"http://www.w3.org/1999/xhtmlx\">x</div>"),
            Err(NarrativeError::NotXhtmlDiv)
        );
    }

    #[test]
    fn forbidden_elements_rejected() {
        for body in [
            "<script>alert(1)</script>",
            "<SCRIPT src=x></SCRIPT>",
            "<iframe src=\"http://x\"></iframe>",
            "<object data=\"x\"></object>",
            "<embed src=\"x\"/>",
            "<form action=\"x\"><p>a</p></form>",
            "<!-- <script>alert(1)</script> -->",
        ] {
            assert_eq!(
                check_narrative(&div(body)),
                Err(NarrativeError::ForbiddenElement),
                "{body}"
            );
        }
    }

    #[test]
    fn event_handlers_rejected() {
        for body in [
            "<img src=\"x\" onerror=\"alert(1)\"/>",
            "<p ONCLICK='x()'>a</p>",
            "<img/onload=alert(1)>",
            "<a href=\"#\" onmouseover = \"x\">a</a>",
        ] {
            assert_eq!(
                check_narrative(&div(body)),
                Err(NarrativeError::EventHandler),
                "{body}"
            );
        }
        // Text that only looks like an attribute is fine.
        assert_eq!(
            check_narrative(&div("<p>set onclick=1 in text</p>")),
            Ok(())
        );
    }

    #[test]
    fn script_urls_rejected() {
        for body in [
            "<a href=\"javascript:alert(1)\">a</a>",
            "<a href=\"JaVaScRiPt:alert(1)\">a</a>",
            "<a href=\"jav&#x09;ascript:alert(1)\">a</a>",
            "<a href=\"&#106;avascript&#58;alert(1)\">a</a>",
            "<a href=\" javascript&colon;x\">a</a>",
            "<img src=vbscript:x>",
        ] {
            assert_eq!(
                check_narrative(&div(body)),
                Err(NarrativeError::ScriptUrl),
                "{body}"
            );
        }
    }

    #[test]
    fn style_expressions_rejected() {
        for body in [
            "<p style=\"width: expression(alert(1))\">a</p>",
            "<p style=\"width: exp/**/ression(alert(1))\">a</p>",
            "<p style=\"width: expr\\ession(alert(1))\">a</p>",
            "<style>p { width: expression(alert(1)) }</style>",
        ] {
            assert_eq!(
                check_narrative(&div(body)),
                Err(NarrativeError::StyleExpression),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_markup_does_not_panic() {
        for body in [
            "<",
            "<a",
            "<a href=",
            "<a href=\"",
            "&#",
            "&#x;",
            "&#99999999999;",
            "<p é=\"é\">",
        ] {
            let _ = check_narrative(&div(body));
        }
    }
}
