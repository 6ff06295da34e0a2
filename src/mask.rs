//! Neuron masks: the one grammar that selects which neurons a comparison or query uses.
//!
//! ```text
//! SPEC    := TERM ( (',' | ' ')+ TERM )*        empty, `all` or `*`: every neuron
//! TERM    := ['-'] ( 'all' | '*' | '@'NAME | GLOB [':' INDICES] )
//! INDICES := IDX (',' IDX)*                     IDX := N | N '-' M (inclusive)
//! ```
//! Terms apply left to right: a plain term adds neurons, a `-` term removes them; a spec
//! that opens with a `-` term starts from every neuron. `GLOB` matches layer names with `*`
//! and `?`. `@NAME` is a stored named mask. Examples: `layer3_*`, `layer3_2:17,40-59`,
//! `all -layer1_*`, `@weather layer4_2:0-99`.
//!
//! Pure: resolving a spec needs the space and a lookup for named masks, nothing else.

use crate::format::SpaceConfig;

/// Errors in a mask spec; each names the offending term.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaskError {
    #[error("mask term {term:?}: no layer matches (layers are {available})")]
    UnknownLayer { term: String, available: String },
    #[error("mask term {term:?}: neuron index {index} is out of range for layer {layer} ({neurons} neurons, indices 0-{last})", last = neurons - 1)]
    IndexOutOfRange {
        term: String,
        index: u64,
        layer: String,
        neurons: u32,
    },
    #[error("mask term {term:?}: {detail}")]
    Syntax { term: String, detail: String },
    #[error("mask term {term:?}: no named mask {name:?} (list them with vdna-db mask ls)")]
    UnknownNamed { term: String, name: String },
    #[error("mask {spec:?} selects no neuron")]
    Empty { spec: String },
}

/// The neurons a mask keeps in one layer, as sorted disjoint half-open runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerMask {
    /// Index of the layer in the space.
    pub layer: usize,
    /// `[start, end)` runs of neuron indices, sorted, disjoint, non-adjacent.
    pub runs: Vec<(u32, u32)>,
    /// Number of neurons kept.
    pub count: u32,
    /// True when every neuron of the layer is kept.
    pub full: bool,
}

impl LayerMask {
    /// Neuron indices kept, in order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.runs.iter().flat_map(|r| r.0 as usize..r.1 as usize)
    }
}

/// A resolved mask: the layers it touches (in space order) and their neurons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub layers: Vec<LayerMask>,
}

impl Mask {
    /// Every neuron of the space.
    pub fn all(space: &SpaceConfig) -> Mask {
        Mask::from_sets(
            space,
            &space
                .layers
                .iter()
                .map(|l| vec![true; l.neurons as usize])
                .collect::<Vec<_>>(),
        )
    }

    /// Total neurons kept.
    pub fn neurons(&self) -> u64 {
        self.layers.iter().map(|l| l.count as u64).sum()
    }

    /// True when the mask keeps every neuron of the space.
    pub fn is_all(&self, space: &SpaceConfig) -> bool {
        self.layers.len() == space.layers.len() && self.layers.iter().all(|l| l.full)
    }

    /// Parses `spec` against `space`; `named` looks up a stored named mask's spec.
    pub fn parse(
        spec: &str,
        space: &SpaceConfig,
        named: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Mask, MaskError> {
        let sets = eval(spec, space, named, 0)?;
        let m = Mask::from_sets(space, &sets);
        if m.layers.is_empty() {
            return Err(MaskError::Empty { spec: spec.into() });
        }
        Ok(m)
    }

    fn from_sets(space: &SpaceConfig, sets: &[Vec<bool>]) -> Mask {
        let mut layers = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let mut runs = Vec::new();
            let mut start = None;
            for (j, on) in set.iter().chain(std::iter::once(&false)).enumerate() {
                match (on, start) {
                    (true, None) => start = Some(j as u32),
                    (false, Some(s)) => {
                        runs.push((s, j as u32));
                        start = None;
                    }
                    _ => {}
                }
            }
            let count: u32 = runs.iter().map(|r| r.1 - r.0).sum();
            if count > 0 {
                layers.push(LayerMask {
                    layer: i,
                    runs,
                    count,
                    full: count == space.layers[i].neurons,
                });
            }
        }
        Mask { layers }
    }

    /// A canonical spec that resolves back to this mask (used in plans and caches).
    pub fn canonical_spec(&self, space: &SpaceConfig) -> String {
        if self.is_all(space) {
            return "all".into();
        }
        let mut out = Vec::new();
        for l in &self.layers {
            let name = &space.layers[l.layer].name;
            if l.full {
                out.push(name.clone());
            } else {
                let idx: Vec<String> = l
                    .runs
                    .iter()
                    .map(|r| {
                        if r.1 == r.0 + 1 {
                            r.0.to_string()
                        } else {
                            format!("{}-{}", r.0, r.1 - 1)
                        }
                    })
                    .collect();
                out.push(format!("{name}:{}", idx.join(",")));
            }
        }
        out.join(" ")
    }
}

const MAX_DEPTH: usize = 8;

struct Term {
    text: String,
    exclude: bool,
    body: String,
    indices: Vec<String>,
}

fn tokenize(spec: &str) -> Result<Vec<Term>, MaskError> {
    let mut terms: Vec<Term> = Vec::new();
    for tok in spec
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
    {
        let is_index = tok.bytes().next().is_some_and(|b| b.is_ascii_digit())
            && tok.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if is_index {
            match terms.last_mut() {
                Some(t) if !t.indices.is_empty() => {
                    t.indices.push(tok.to_string());
                    t.text.push(',');
                    t.text.push_str(tok);
                    continue;
                }
                _ => {
                    return Err(MaskError::Syntax {
                        term: tok.into(),
                        detail: "a neuron index must follow a LAYER: term, as in layer3_2:17,40-59"
                            .into(),
                    })
                }
            }
        }
        let (exclude, rest) = match tok.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, tok),
        };
        let (body, indices) = match rest.split_once(':') {
            Some((b, i)) => {
                if i.is_empty() {
                    return Err(MaskError::Syntax {
                        term: tok.into(),
                        detail: "nothing after ':' (give neuron indices such as 0-99)".into(),
                    });
                }
                (b.to_string(), vec![i.to_string()])
            }
            None => (rest.to_string(), vec![]),
        };
        if body.is_empty() {
            return Err(MaskError::Syntax {
                term: tok.into(),
                detail: "empty layer name".into(),
            });
        }
        terms.push(Term {
            text: tok.into(),
            exclude,
            body,
            indices,
        });
    }
    Ok(terms)
}

fn eval(
    spec: &str,
    space: &SpaceConfig,
    named: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<Vec<Vec<bool>>, MaskError> {
    let terms = tokenize(spec)?;
    let all = || {
        space
            .layers
            .iter()
            .map(|l| vec![true; l.neurons as usize])
            .collect::<Vec<_>>()
    };
    if terms.is_empty() {
        return Ok(all());
    }
    let mut sets: Vec<Vec<bool>> = if terms[0].exclude {
        all()
    } else {
        space
            .layers
            .iter()
            .map(|l| vec![false; l.neurons as usize])
            .collect()
    };
    for t in &terms {
        let on = !t.exclude;
        if t.body == "all" || t.body == "*" && t.indices.is_empty() {
            sets.iter_mut()
                .for_each(|s| s.iter_mut().for_each(|x| *x = on));
            continue;
        }
        if let Some(name) = t.body.strip_prefix('@') {
            if !t.indices.is_empty() {
                return Err(MaskError::Syntax {
                    term: t.text.clone(),
                    detail: "a named mask takes no indices".into(),
                });
            }
            if depth >= MAX_DEPTH {
                return Err(MaskError::Syntax {
                    term: t.text.clone(),
                    detail: format!(
                        "named masks nest deeper than {MAX_DEPTH} (is one defined through itself?)"
                    ),
                });
            }
            let inner = named(name).ok_or_else(|| MaskError::UnknownNamed {
                term: t.text.clone(),
                name: name.into(),
            })?;
            let sub = eval(&inner, space, named, depth + 1)?;
            for (s, sub) in sets.iter_mut().zip(sub) {
                for (x, y) in s.iter_mut().zip(sub) {
                    if y {
                        *x = on;
                    }
                }
            }
            continue;
        }
        let matched: Vec<usize> = (0..space.layers.len())
            .filter(|i| glob_match(&t.body, &space.layers[*i].name))
            .collect();
        if matched.is_empty() {
            let names: Vec<&str> = space.layers.iter().map(|l| l.name.as_str()).collect();
            let available = if names.len() > 8 {
                format!(
                    "{} .. {} ({} layers)",
                    names[..4].join(", "),
                    names[names.len() - 1],
                    names.len()
                )
            } else {
                names.join(", ")
            };
            return Err(MaskError::UnknownLayer {
                term: t.text.clone(),
                available,
            });
        }
        for li in matched {
            let n = space.layers[li].neurons;
            if t.indices.is_empty() {
                sets[li].iter_mut().for_each(|x| *x = on);
                continue;
            }
            for idx in &t.indices {
                let (lo, hi) = parse_index(idx, &t.text)?;
                let last = lo.max(hi);
                if last >= n as u64 {
                    return Err(MaskError::IndexOutOfRange {
                        term: t.text.clone(),
                        index: last,
                        layer: space.layers[li].name.clone(),
                        neurons: n,
                    });
                }
                for x in &mut sets[li][lo as usize..=hi as usize] {
                    *x = on;
                }
            }
        }
    }
    Ok(sets)
}

fn parse_index(s: &str, term: &str) -> Result<(u64, u64), MaskError> {
    let bad = |d: &str| MaskError::Syntax {
        term: term.into(),
        detail: format!("{s:?} {d}"),
    };
    let num = |x: &str| {
        x.parse::<u64>()
            .map_err(|_| bad("is not an index or range such as 40-59"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad("is a decreasing range"));
            }
            Ok((a, b))
        }
        None => {
            let a = num(s)?;
            Ok((a, a))
        }
    }
}

/// Matches `name` against a glob with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{DistKind, LayerSpec};

    fn space() -> SpaceConfig {
        let layers = [("layer1_0", 4), ("layer1_1", 4), ("layer3_2", 100)]
            .iter()
            .map(|(n, k)| LayerSpec {
                name: (*n).into(),
                neurons: *k,
            })
            .collect();
        SpaceConfig::unpinned("x", layers, DistKind::Gaussian)
    }

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn hand_worked_specs_select_the_expected_neurons() {
        let s = space();
        assert_eq!(Mask::parse("", &s, &none).unwrap().neurons(), 108);
        assert_eq!(Mask::parse("layer1_*", &s, &none).unwrap().neurons(), 8);
        let m = Mask::parse("layer3_2:17,40-59", &s, &none).unwrap();
        assert_eq!(m.layers[0].runs, vec![(17, 18), (40, 60)]);
        assert_eq!(m.neurons(), 21);
        assert_eq!(Mask::parse("-layer1_*", &s, &none).unwrap().neurons(), 100);
        assert_eq!(
            Mask::parse("all -layer3_2:0-49 layer1_0:1", &s, &none)
                .unwrap()
                .neurons(),
            58
        );
        assert_eq!(
            Mask::parse("layer1_? -layer1_1:0,2", &s, &none)
                .unwrap()
                .neurons(),
            6
        );
    }

    #[test]
    fn named_masks_resolve_and_cycles_stop() {
        let s = space();
        let named = |n: &str| match n {
            "early" => Some("layer1_*".to_string()),
            "loop" => Some("@loop".to_string()),
            _ => None,
        };
        assert_eq!(
            Mask::parse("@early layer3_2:0", &s, &named)
                .unwrap()
                .neurons(),
            9
        );
        assert!(matches!(
            Mask::parse("@loop", &s, &named),
            Err(MaskError::Syntax { .. })
        ));
        assert!(matches!(
            Mask::parse("@nope", &s, &named),
            Err(MaskError::UnknownNamed { .. })
        ));
    }

    #[test]
    fn errors_name_the_term() {
        let s = space();
        let e = Mask::parse("layer9_*", &s, &none).unwrap_err().to_string();
        assert!(e.contains("layer9_*") && e.contains("layer1_0"), "{e}");
        let e = Mask::parse("layer3_2:100", &s, &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer3_2:100") && e.contains("0-99"), "{e}");
        assert!(matches!(
            Mask::parse("layer1_0 -layer1_0", &s, &none),
            Err(MaskError::Empty { .. })
        ));
        assert!(Mask::parse("17", &s, &none).is_err());
        assert!(Mask::parse("layer3_2:9-3", &s, &none).is_err());
    }

    #[test]
    fn canonical_spec_resolves_to_the_same_mask() {
        let s = space();
        for spec in [
            "",
            "layer1_*",
            "layer3_2:17,40-59 layer1_0:3",
            "-layer1_1:1",
        ] {
            let m = Mask::parse(spec, &s, &none).unwrap();
            assert_eq!(
                Mask::parse(&m.canonical_spec(&s), &s, &none).unwrap(),
                m,
                "{spec}"
            );
        }
    }
}
