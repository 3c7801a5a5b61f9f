//! The SQL form of topic patterns agrees with the reference matcher.

use dabgent_mq::topic::{matches, validate_pattern, validate_topic};
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::common;

/// Characters that mean something to LIKE, GLOB or the pattern language, plus ordinary ones.
const ALPHABET: &[char] = &[
    'a', 'b', 'A', '.', '%', '_', '\\', '*', '?', '[', ']', '^', '-', 'é',
];

fn text(allow_star: bool) -> impl Strategy<Value = String> {
    let chars: Vec<char> = ALPHABET
        .iter()
        .copied()
        .filter(|c| allow_star || *c != '*')
        .collect();
    prop::collection::vec(prop::sample::select(chars), 1..10).prop_map(|v| v.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_form_of_patterns_agrees_with_the_reference_matcher() {
    let (queue, _db) = common::queue("topics_property").await;
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    // Patterns are often built from the topic, so that matches are common, not rare.
    let strategy = (
        text(false),
        text(true),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(topic, pattern, cut, derive)| {
            if derive {
                let chars: Vec<char> = topic.chars().collect();
                let at = cut.index(chars.len() + 1);
                let mut derived: String = chars[..at].iter().collect();
                derived.push('*');
                (topic, derived)
            } else {
                (topic, pattern)
            }
        });
    // The database check runs inside proptest's runner, so a failure is shrunk to a minimal
    // topic and pattern.
    let handle = tokio::runtime::Handle::current();
    let matched = AtomicUsize::new(0);
    runner
        .run(&strategy, |(topic, pattern)| {
            validate_topic(&topic).unwrap();
            validate_pattern(&pattern).unwrap();
            let expected = matches(&pattern, &topic);
            let in_db = tokio::task::block_in_place(|| {
                handle.block_on(queue.topic_matches_in_database(&pattern, &topic))
            })
            .unwrap();
            prop_assert_eq!(in_db, expected, "pattern {:?} topic {:?}", pattern, topic);
            matched.fetch_add(usize::from(expected), Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    let matched = matched.into_inner();
    assert!(
        matched > 50,
        "too few matching cases to mean anything: {matched}"
    );
}

#[tokio::test]
async fn sql_form_of_patterns_agrees_on_tricky_cases() {
    let (queue, _db) = common::queue("topics_tricky").await;
    let cases = [
        ("*", "order.created", true),
        ("order.*", "order.created.v2", true),
        ("*.created", "order.created", true),
        ("order.created", "order.created", true),
        ("order.created", "ORDER.CREATED", false),
        ("order_created", "orderXcreated", false),
        ("order%", "order.created", false),
        ("100%", "100%", true),
        ("a\\b", "a\\b", true),
        ("a\\*", "a\\xyz", true),
        ("a\\*", "ab", false),
        ("[ab]", "a", false),
        ("[ab]", "[ab]", true),
        ("a?c", "abc", false),
        ("a?c", "a?c", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "acb", false),
        ("é*", "été", true),
    ];
    for (pattern, topic, expected) in cases {
        assert_eq!(
            matches(pattern, topic),
            expected,
            "reference: {pattern:?} {topic:?}"
        );
        assert_eq!(
            queue
                .topic_matches_in_database(pattern, topic)
                .await
                .unwrap(),
            expected,
            "database: {pattern:?} {topic:?}"
        );
    }
}
