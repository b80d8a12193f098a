//! A merged group read as of a past time.
//!
//! A merge closes one subject into another: from then on the other (the group's root) answers
//! for both, and its choices are the later of each side's. Before the merge each answered for
//! itself. So a question about a past time reads the group *as it stood then*: the subject
//! the asked one had been merged into by that time (following later merges too), and the
//! choices of the subjects merged into that one by then. [`GroupPast`] holds what that needs
//! (each subject's own history and when it was merged into which) and answers for any time
//! without reading the ledger again.

use std::collections::HashMap;

use crate::{StateEntry, SubjectState, Timestamp};

/// The past of one merged group: its current root's history and flags, each member's own
/// history, and the merge that closed each member.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupPast {
    /// The group's current root.
    root: String,
    /// The root's current state read with its history: its flags (which absorbed every
    /// member's) and the revision read; its entries are in `histories`.
    current: SubjectState,
    /// Each subject's own consent history (the root's and every member's).
    histories: HashMap<String, Vec<StateEntry>>,
    /// For each member: the subject it was merged into, and when the ledger recorded it.
    closed: HashMap<String, (String, Timestamp)>,
}

impl GroupPast {
    /// The group of `root`, whose own history (entries, flags, revision) is `history`,
    /// before its members are added.
    pub fn new(root: &str, mut history: SubjectState) -> GroupPast {
        let entries = std::mem::take(&mut history.entries);
        GroupPast {
            root: root.to_owned(),
            current: history,
            histories: HashMap::from([(root.to_owned(), entries)]),
            closed: HashMap::new(),
        }
    }

    /// Adds a member: its own history, read at `revision`, and the merge that closed it
    /// (`into`, recorded `at`).
    pub fn add_member(
        &mut self,
        subject_id: String,
        history: Vec<StateEntry>,
        revision: crate::Revision,
        into: String,
        at: Timestamp,
    ) {
        self.current.revision = self.current.revision.max(revision);
        self.closed.insert(subject_id.clone(), (into, at));
        self.histories.insert(subject_id, history);
    }

    /// The group's current root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The root's current flags and the latest revision read of the group, without entries
    /// (the group's past answers for them: [`GroupPast::state_at`]).
    pub fn current(&self) -> &SubjectState {
        &self.current
    }

    /// The subject that answered for `asked` at `at`: `asked` itself, or the subject it had
    /// been merged into by then (and on, through merges recorded by then). A subject not of
    /// this group answers for itself.
    pub fn root_at<'a>(&'a self, asked: &'a str, at: Timestamp) -> &'a str {
        let mut subject = asked;
        // Each member is closed once, so the walk ends within the group's size; the bound
        // only guards against a malformed input.
        for _ in 0..=self.closed.len() {
            match self.closed.get(subject) {
                Some((into, merged_at)) if *merged_at <= at => subject = into,
                _ => break,
            }
        }
        subject
    }

    /// What answered for `asked` at `at`: the subject ([`GroupPast::root_at`]) and a state
    /// holding the histories of that subject and of every subject merged into it by then,
    /// with the group's current flags (they already count every member's rights; which were
    /// in force at `at` is read from their own times) and revision.
    pub fn state_at(&self, asked: &str, at: Timestamp) -> (String, SubjectState) {
        let root = self.root_at(asked, at).to_owned();
        let entries = self
            .histories
            .iter()
            .filter(|(subject, _)| self.root_at(subject, at) == root)
            .flat_map(|(_, entries)| entries.iter().cloned())
            .collect();
        let state = SubjectState {
            entries,
            revision: self.current.revision,
            flags: self.current.flags.clone(),
        };
        (root, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, Revision};
    use proptest::prelude::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * Timestamp::MICROS_PER_SECOND)
    }

    fn entry(decision: Decision, collected: i64, revision: Revision) -> StateEntry {
        StateEntry {
            purpose_id: "calls".into(),
            vendor_id: String::new(),
            decision,
            event_id: format!("e{revision}"),
            policy_version_id: "v1".into(),
            collected_at: at(collected),
            revision,
        }
    }

    fn history(entries: Vec<StateEntry>) -> SubjectState {
        SubjectState {
            entries,
            revision: 10,
            flags: Default::default(),
        }
    }

    fn ids(state: &SubjectState) -> Vec<String> {
        let mut ids: Vec<String> = state.entries.iter().map(|e| e.event_id.clone()).collect();
        ids.sort();
        ids
    }

    /// cookie merged into phone at 100, phone into account at 200.
    fn chain() -> GroupPast {
        let mut group = GroupPast::new("account", history(vec![entry(Decision::Granted, 10, 1)]));
        group.add_member(
            "phone".into(),
            vec![entry(Decision::Withdrawn, 50, 2)],
            12,
            "account".into(),
            at(200),
        );
        group.add_member(
            "cookie".into(),
            vec![entry(Decision::Denied, 20, 3)],
            11,
            "phone".into(),
            at(100),
        );
        group
    }

    #[test]
    fn before_a_merge_each_side_answers_for_itself() {
        let group = chain();
        let (root, state) = group.state_at("cookie", at(99));
        assert_eq!((root.as_str(), ids(&state)), ("cookie", vec!["e3".into()]));
        let (root, state) = group.state_at("account", at(150));
        assert_eq!((root.as_str(), ids(&state)), ("account", vec!["e1".into()]));
        let (root, state) = group.state_at("phone", at(150));
        assert_eq!(
            (root.as_str(), ids(&state)),
            ("phone", vec!["e2".into(), "e3".into()])
        );
    }

    #[test]
    fn from_a_merge_on_the_group_answers_together() {
        let group = chain();
        for asked in ["cookie", "phone", "account"] {
            let (root, state) = group.state_at(asked, at(200));
            assert_eq!(root, "account");
            assert_eq!(ids(&state), vec!["e1", "e2", "e3"]);
            assert_eq!(state.revision, 12);
        }
        assert_eq!(group.root(), "account");
        assert_eq!(group.root_at("stranger", at(300)), "stranger");
    }

    proptest! {
        /// Whatever the merges' order and times: at a time before every merge each subject
        /// reads only its own history; from the last merge on every member reads the whole
        /// group's; and at any time the entries read are those of one subject's group, which
        /// holds the asked one.
        #[test]
        fn a_group_reads_its_members_only_from_their_merges(
            times in proptest::collection::vec(1i64..1000, 1..8),
            asked in 0usize..8,
            probe in 0i64..1100,
        ) {
            // Subject i+1 is merged into a subject before it (a tree rooted at s0) at times[i].
            let n = times.len() + 1;
            let name = |i: usize| format!("s{i}");
            let mut group = GroupPast::new(&name(0), history(vec![entry(Decision::Granted, 0, 1)]));
            for (i, t) in times.iter().enumerate() {
                let into = (i * 7) % (i + 1);
                group.add_member(name(i + 1), vec![entry(Decision::Denied, 0, i as Revision + 2)], 10, name(into), at(*t));
            }
            let asked = name(asked % n);
            let (root, state) = group.state_at(&asked, at(0));
            prop_assert_eq!(&root, &asked);
            prop_assert_eq!(state.entries.len(), 1);
            let last = *times.iter().max().unwrap_or(&0);
            let (root, state) = group.state_at(&asked, at(last));
            prop_assert_eq!(root.as_str(), "s0");
            prop_assert_eq!(state.entries.len(), n);
            let (root, state) = group.state_at(&asked, at(probe));
            let owners: Vec<String> = state
                .entries
                .iter()
                .map(|e| name(e.revision as usize - 1))
                .collect();
            let in_group = owners.iter().all(|owner| group.root_at(owner, at(probe)) == root);
            prop_assert!(in_group, "{owners:?} not all under {root}");
            prop_assert!(owners.contains(&root));
        }
    }
}
