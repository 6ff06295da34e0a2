//! DNA names: `name[:tag]` in OCI syntax (lowercase path components, a tag of up to 128
//! word characters), the tag defaulting to `latest`. Pure parsing.

use std::fmt;

/// The tag used when none is given.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed `name:tag`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName {
    pub name: String,
    pub tag: String,
}

/// An invalid name or tag; the message shows the rule.
#[derive(Debug, thiserror::Error)]
#[error("invalid reference {input:?}: {detail} (use name[:tag], name = lowercase letters, digits and . _ - separated path components like team/cityscapes, tag = up to 128 of A-Z a-z 0-9 _ . - not starting with . or -)")]
pub struct RefNameError {
    pub input: String,
    pub detail: String,
}

impl RefName {
    /// Parses `name[:tag]`.
    pub fn parse(s: &str) -> Result<RefName, RefNameError> {
        let err = |d: &str| RefNameError {
            input: s.chars().take(200).collect(),
            detail: d.into(),
        };
        // A ':' after the last '/' separates the tag (a registry host:port is not accepted here).
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, DEFAULT_TAG),
        };
        if name.is_empty() || name.len() > 255 {
            return Err(err("the name is empty or longer than 255 characters"));
        }
        for comp in name.split('/') {
            if !valid_component(comp) {
                return Err(err(&format!("name component {comp:?} is not allowed")));
            }
        }
        if !valid_tag(tag) {
            return Err(err(&format!("tag {tag:?} is not allowed")));
        }
        Ok(RefName {
            name: name.into(),
            tag: tag.into(),
        })
    }
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+ ( ( [._] | __ | -+ ) [a-z0-9]+ )*
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Whether `t` is a valid tag: 1-128 of `A-Za-z0-9_.-`, starting with a letter, digit
/// or `_`.
pub fn is_valid_tag(t: &str) -> bool {
    valid_tag(t)
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|x| x.is_ascii_alphanumeric() || *x == b'_' || *x == b'.' || *x == b'-')
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl serde::Serialize for RefName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RefName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RefName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_and_tags() {
        assert_eq!(
            RefName::parse("cityscapes").unwrap().to_string(),
            "cityscapes:latest"
        );
        assert_eq!(
            RefName::parse("team/city-scapes_v2:2024.1").unwrap().tag,
            "2024.1"
        );
        for bad in [
            "",
            "Upper",
            "a//b",
            "-a",
            "a:",
            "a:.x",
            "a:b:c",
            "a b",
            "../x",
            "a/..",
            &"t".repeat(300),
        ] {
            assert!(RefName::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
