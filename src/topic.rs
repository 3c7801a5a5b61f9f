//! Topics, topic patterns and stream names: validation and the reference matcher.
//!
//! A topic is 1–255 characters with no whitespace, no control characters and no `*`. A pattern
//! has the same shape but may contain `*`, which matches any run of characters, dots included:
//!
//! ```
//! use dabgent_mq::topic::matches;
//!
//! assert!(matches("*", "order.created"));
//! assert!(matches("order.*", "order.created.v2"));
//! assert!(matches("*.created", "order.created"));
//! assert!(!matches("order.created", "order.created.v2"));
//! assert!(!matches("order_%", "order.created")); // `%` and `_` are literal
//! ```
//!
//! [`matches()`] is the specification. The databases evaluate the same patterns in SQL (see
//! the crate-private backend), and a property test checks that both agree.

use crate::error::{MqError, Result};

/// Longest stream name, group name, consumer id, topic or pattern, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Whether `topic` matches `pattern`, where `*` matches any (possibly empty) run of characters
/// and every other character matches only itself.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut parts = pattern.split('*');
    // `split` always yields at least one part.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = topic.strip_prefix(first) else {
        return false;
    };
    let middle_and_last: Vec<&str> = parts.collect();
    let Some((last, middle)) = middle_and_last.split_last() else {
        // No `*` at all: the pattern is a literal.
        return rest.is_empty();
    };
    // Leftmost placement of each middle part leaves the most room for the rest, so a greedy
    // scan is exact.
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Checks a topic: 1–255 characters, no whitespace, no control characters, no `*`.
///
/// # Errors
///
/// [`MqError::InvalidTopic`] naming the rule that was broken.
pub fn validate_topic(topic: &str) -> Result<()> {
    let invalid = |reason| MqError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    check_text(topic).map_err(invalid)?;
    if topic.contains('*') {
        return Err(invalid("`*` is only allowed in patterns"));
    }
    Ok(())
}

/// Checks a topic pattern: like a topic, but `*` is allowed.
///
/// # Errors
///
/// [`MqError::InvalidPattern`] naming the rule that was broken.
pub fn validate_pattern(pattern: &str) -> Result<()> {
    check_text(pattern).map_err(|reason| MqError::InvalidPattern {
        pattern: pattern.to_owned(),
        reason,
    })
}

/// Checks a stream name, group name or consumer id: 1–255 ASCII letters, digits, `_`, `-`, `.`
/// or `:`.
///
/// # Errors
///
/// [`MqError::InvalidName`] naming the rule that was broken.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| MqError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(invalid("must be at most 255 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(invalid(
            "may contain only ASCII letters, digits, `_`, `-`, `.` and `:`",
        ));
    }
    Ok(())
}

fn check_text(text: &str) -> std::result::Result<(), &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    if text.chars().count() > MAX_NAME_CHARS {
        return Err("must be at most 255 characters");
    }
    if text.chars().any(char::is_whitespace) {
        return Err("must not contain whitespace");
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_including_dots() {
        assert!(matches("*", "a"));
        assert!(matches("order.*", "order.created"));
        assert!(matches("order.*", "order.created.v2"));
        assert!(matches("order.*", "order."));
        assert!(!matches("order.*", "order"));
        assert!(matches("*.created", "order.created"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("a*a", "a"));
        assert!(matches("**", "anything"));
    }

    #[test]
    fn literal_pattern_matches_only_itself() {
        assert!(matches("order.created", "order.created"));
        assert!(!matches("order.created", "order.createdX"));
        assert!(!matches("order.created", "Order.created"));
        assert!(!matches("order_created", "order.created"));
        assert!(!matches("order%", "order.created"));
    }

    #[test]
    fn topics_are_validated() {
        assert!(validate_topic("order.created").is_ok());
        assert!(validate_topic(&"é".repeat(255)).is_ok());
        for bad in ["", " ", "a b", "a*", "a\0b", "a\tb", &"x".repeat(256)] {
            assert!(
                matches!(validate_topic(bad), Err(MqError::InvalidTopic { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_pattern("*").is_ok());
        assert!(matches!(
            validate_pattern("a b*"),
            Err(MqError::InvalidPattern { .. })
        ));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("orders-v2.eu:1_a").is_ok());
        for bad in ["", "a b", "a/b", "ä", "a;b", "a'b", &"x".repeat(256)] {
            assert!(
                matches!(validate_name(bad), Err(MqError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
