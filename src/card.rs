//! Dataset cards: a markdown text per ref saying what the dataset is (description,
//! source, licence, citation, tags), kept in the catalogue beside the ref and committed
//! through the same log as every other change.
//!
//! A card may open with a front matter block of `key: value` lines between two `---`
//! lines, as dataset hubs write theirs:
//!
//! ```text
//! ---
//! title: Gradients
//! source: https://example.org/gradients
//! license: CC-BY-4.0
//! tags: [synthetic, colour]
//! citation: |
//!   @misc{gradients, title={Gradients}, year={2026}}
//! ---
//! A few hundred synthetic colour gradients.
//! ```
//!
//! That is a small subset of YAML: one `key: value` per line, a value `[a, b]` or
//! `a, b` for `tags`, quotes around a value stripped, and `|` starting a block of the
//! indented lines below it. Unknown keys are kept and shown. The rest is CommonMark,
//! rendered by the server with raw HTML shown as text, links only to http(s), mailto
//! and in-site paths, and images shown as links (a card never makes a visitor's browser
//! fetch from elsewhere).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The largest card accepted, in bytes of UTF-8.
pub const MAX_CARD_BYTES: usize = 64 * 1024;

/// A card as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardRecord {
    pub markdown: String,
    /// Seconds since the Unix epoch when the card was set.
    pub updated: u64,
}

/// A card split into its front matter and its markdown body.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Card {
    pub title: Option<String>,
    pub source: Option<String>,
    pub license: Option<String>,
    pub citation: Option<String>,
    pub tags: Vec<String>,
    /// Front matter keys other than the above, in their order of appearance.
    pub other: BTreeMap<String, String>,
    /// The markdown after the front matter.
    pub body: String,
}

/// What a listing shows of a card: its title, licence and tags and the start of its
/// first paragraph.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CardBrief {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The first paragraph of the body as plain text, at most [`SUMMARY_CHARS`] characters.
    pub summary: String,
}

/// The longest summary a [`CardBrief`] carries.
pub const SUMMARY_CHARS: usize = 200;

impl Card {
    /// The listing's view of this card.
    pub fn brief(&self) -> CardBrief {
        let para = self
            .body
            .split("\n\n")
            .map(str::trim)
            .find(|p| {
                !p.is_empty()
                    && !p.starts_with('#')
                    && !p.starts_with("```")
                    && !p.starts_with('|')
                    && !p.starts_with("---")
            })
            .unwrap_or("");
        let plain: String = para
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !matches!(c, '*' | '`' | '_'))
            .collect();
        let mut summary: String = plain.chars().take(SUMMARY_CHARS).collect();
        if plain.chars().count() > SUMMARY_CHARS {
            summary.push('…');
        }
        CardBrief {
            title: self.title.clone(),
            license: self.license.clone(),
            tags: self.tags.clone(),
            summary,
        }
    }
}

/// Checks a card's text before it is stored: size, UTF-8 (the caller's `&str`), no NUL,
/// and a front matter block that closes.
pub fn validate(what: &str, markdown: &str) -> Result<(), Error> {
    if markdown.len() > MAX_CARD_BYTES {
        return Err(Error::Invalid(format!(
            "the card of {what} is {} bytes; a card holds at most {MAX_CARD_BYTES} (link to longer documentation from it)",
            markdown.len()
        )));
    }
    if markdown.contains('\0') {
        return Err(Error::Invalid(format!(
            "the card of {what} contains a NUL byte: a card is markdown text"
        )));
    }
    parse(markdown).map(|_| ()).map_err(|e| {
        Error::Invalid(format!(
            "the card of {what}: {e} (see `vdna-db card --help` for its format)"
        ))
    })
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return v[1..v.len() - 1].to_string();
        }
    }
    v.to_string()
}

fn split_list(v: &str) -> Vec<String> {
    let v = v.trim();
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    inner
        .split(',')
        .map(unquote)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits a card into front matter and body.
pub fn parse(markdown: &str) -> Result<Card, String> {
    let text = markdown.strip_prefix('\u{feff}').unwrap_or(markdown);
    let mut card = Card::default();
    let mut lines = text.lines().peekable();
    if lines.peek().map(|l| l.trim_end()) != Some("---") {
        card.body = text.to_string();
        return Ok(card);
    }
    lines.next();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut closed = false;
    let mut consumed = 1;
    while let Some(line) = lines.next() {
        consumed += 1;
        if line.trim_end() == "---" {
            closed = true;
            break;
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!(
                "front matter line {consumed} is not `key: value`: {line:?}"
            ));
        };
        let key = k.trim().to_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!(
                "front matter line {consumed} has no key before its colon: {line:?}"
            ));
        }
        let mut value = v.trim().to_string();
        if value == "|" || value == ">" {
            let fold = value == ">";
            let mut block = Vec::new();
            while let Some(next) = lines.peek() {
                if next.starts_with(' ') || next.starts_with('\t') || next.trim().is_empty() {
                    if next.trim_end() == "---" {
                        break;
                    }
                    block.push(next.trim().to_string());
                    lines.next();
                    consumed += 1;
                } else {
                    break;
                }
            }
            while block.last().is_some_and(|l| l.is_empty()) {
                block.pop();
            }
            value = block.join(if fold { " " } else { "\n" });
        } else {
            value = unquote(&value);
        }
        fields.push((key, value));
    }
    if !closed {
        return Err("its front matter opens with `---` but no line `---` closes it".into());
    }
    for (k, v) in fields {
        match k.as_str() {
            "title" | "pretty_name" => card.title = Some(v),
            "source" | "url" | "homepage" => card.source = Some(v),
            "license" | "licence" => card.license = Some(v),
            "citation" => card.citation = Some(v),
            "tags" => card.tags = split_list(&v),
            _ => {
                card.other.insert(k, v);
            }
        }
    }
    card.body = lines.collect::<Vec<_>>().join("\n");
    Ok(card)
}

/// Whether a link target may be followed from a card: web and mail links and paths on
/// this site. `javascript:`, `data:` and every other scheme are refused.
pub fn safe_url(url: &str) -> bool {
    let u = url.trim();
    let lower = u.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
    {
        return true;
    }
    // Relative: no scheme before the first '/', '?' or '#'.
    let head = u.split(['/', '?', '#']).next().unwrap_or("");
    !head.contains(':') && !u.starts_with("//")
}

/// A link target as a card may hold it: unsafe ones become a link to nowhere.
#[cfg(feature = "server")]
fn checked(url: pulldown_cmark::CowStr<'_>) -> pulldown_cmark::CowStr<'_> {
    if safe_url(&url) {
        url
    } else {
        pulldown_cmark::CowStr::from("#")
    }
}

/// Renders markdown as HTML that is safe to place in a page: raw HTML is shown as text,
/// unsafe link targets are dropped, images become links to their address.
#[cfg(feature = "server")]
pub fn render_markdown(md: &str) -> String {
    use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd};
    let opts = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let events = Parser::new_ext(md, opts).map(|ev| match ev {
        Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: checked(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            dest_url,
            title,
            id,
            ..
        }) => Event::Start(Tag::Link {
            link_type: LinkType::Inline,
            dest_url: checked(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_fields_and_body() {
        let c = parse(
            "---\ntitle: \"Gradients\"\nsource: https://example.org/g\nlicence: CC-BY-4.0\ntags: [a, 'b c']\ncitation: |\n  @misc{g,\n    year={2026}}\nextra: 1\n---\n# Body\ntext",
        )
        .unwrap();
        assert_eq!(c.title.as_deref(), Some("Gradients"));
        assert_eq!(c.source.as_deref(), Some("https://example.org/g"));
        assert_eq!(c.license.as_deref(), Some("CC-BY-4.0"));
        assert_eq!(c.tags, vec!["a".to_string(), "b c".to_string()]);
        assert_eq!(c.citation.as_deref(), Some("@misc{g,\nyear={2026}}"));
        assert_eq!(c.other.get("extra").map(String::as_str), Some("1"));
        assert_eq!(c.body, "# Body\ntext");
    }

    #[test]
    fn no_front_matter_is_all_body_and_an_unclosed_one_is_refused() {
        assert_eq!(parse("plain *md*").unwrap().body, "plain *md*");
        assert!(parse("---\ntitle: x\n").unwrap_err().contains("closes"));
        assert!(parse("---\nno colon here\n---\n").is_err());
        assert!(validate("a:b", &"x".repeat(MAX_CARD_BYTES + 1))
            .unwrap_err()
            .to_string()
            .contains("at most"));
    }

    #[test]
    fn brief_takes_the_first_paragraph() {
        let c = parse("---\ntitle: T\ntags: x, y\n---\n# Heading\n\nSome *bold*\ntext.\n\nMore.")
            .unwrap();
        let b = c.brief();
        assert_eq!(b.summary, "Some bold text.");
        assert_eq!(b.tags, vec!["x".to_string(), "y".to_string()]);
        let long = parse(&"w ".repeat(300)).unwrap().brief();
        assert_eq!(long.summary.chars().count(), SUMMARY_CHARS + 1);
    }

    #[test]
    fn urls() {
        for ok in [
            "https://a.b/c",
            "http://x",
            "mailto:a@b",
            "/d/x:y",
            "#s",
            "rel/p",
        ] {
            assert!(safe_url(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            " JavaScript:alert(1)",
            "data:text/html,x",
            "vbscript:x",
            "//evil.example/x",
        ] {
            assert!(!safe_url(bad), "{bad}");
        }
    }

    #[cfg(feature = "server")]
    #[test]
    fn rendering_escapes_html_and_drops_unsafe_links() {
        let h = render_markdown(
            "# T\n\n<script>alert(1)</script>\n\n[x](javascript:alert(2)) <b onclick=x>b</b> ![i](https://e.x/i.png \"t\")\n\n| a | b |\n|---|---|\n| 1 | 2 |",
        );
        assert!(h.contains("<h1>T</h1>"), "{h}");
        assert!(
            !h.contains("<script") && h.contains("&lt;script&gt;"),
            "{h}"
        );
        assert!(!h.contains("javascript:"), "{h}");
        assert!(
            !h.contains("<b ") && h.contains("&lt;b onclick=x&gt;"),
            "{h}"
        );
        assert!(
            !h.contains("<img") && h.contains("href=\"https://e.x/i.png\""),
            "{h}"
        );
        assert!(h.contains("<table>"), "{h}");
    }
}
