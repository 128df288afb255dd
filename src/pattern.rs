//! Glob patterns over keys (`*`, `?`, `[...]`), the syntax SQLite's `GLOB` and Redis'
//! `SCAN MATCH` use, so one pattern means the same thing on every backend.

/// Whether `text` matches the glob `pattern`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently stretched to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class_match(&p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == '[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[start] == '['`; returns whether it
/// matched and the index after the class, or `None` if the class is not closed.
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('^' | '!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// The pattern that selects a tag's entries: `*|{tag}|*` with the tag normalized.
pub fn tag_pattern(tag: &str) -> Option<String> {
    let tag = crate::key::normalize_tag(tag);
    (!tag.is_empty()).then(|| format!("*{}*", escape_glob(&tag)))
}

/// [`escape_glob`], for the command line.
#[pyo3::pyfunction]
pub fn _escape_glob(literal: &str) -> String {
    escape_glob(literal)
}

/// Escapes the glob metacharacters of a literal (`*`, `?`, `[`), for SQLite's GLOB,
/// Redis' MATCH and [`glob_match`] alike.
pub fn escape_glob(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len());
    for c in literal.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_questions() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*|users|*", "5m:get_user||users||user_id=1"));
        assert!(!glob_match("*|users|*", "5m:get_user|user_id=1"));
        assert!(glob_match("*:v1:get_user|*", "5m:v1:get_user|user_id=1"));
        assert!(glob_match("*:v1:get_user|*", "1h:v1:get_user||t||"));
        assert!(!glob_match("*:v1:get_user|*", "5m:v1:get_users|x=1"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }

    #[test]
    fn classes() {
        assert!(glob_match("[abc]x", "bx"));
        assert!(!glob_match("[abc]x", "dx"));
        assert!(glob_match("[a-c]x", "cx"));
        assert!(glob_match("[^a-c]x", "dx"));
        assert!(glob_match("[]]", "]"));
        assert!(glob_match("[", "["));
    }

    #[test]
    fn tag_patterns() {
        assert_eq!(tag_pattern("users").as_deref(), Some("*|users|*"));
        assert_eq!(tag_pattern("a|b").as_deref(), Some("*|a.b|*"));
        assert_eq!(tag_pattern(""), None);
    }
}
