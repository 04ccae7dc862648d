//! A linearizability checker for recorded histories ([`crate::history`]), per record
//! (P-compositionality: a history is linearizable iff each record's sub-history is).
//!
//! The model is a register with compare-and-set: a record is absent or holds a name at a
//! version. The search is Wing & Gong's, with Lowe's memoisation of (operations linearized,
//! state) as Porcupine and Knossos do it: walk the history's call and return events in time
//! order; at a call, try to linearize that operation now; at a return whose operation is not
//! linearized yet, backtrack. An operation with an unknown outcome has no return event: it may
//! take effect at any point after its call, or never. The model is nondeterministic for those
//! (did the write happen? which version did it get?), so the search carries the set of states
//! the record may be in, as Porcupine does for nondeterministic models.
//!
//! On a violation, [`check`] returns the smallest window it can name: the operation whose
//! return could not be reached, the operations concurrent with it, and the states the record
//! could be in before them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::history::{Call, Operation, Outcome, Refusal};

/// What the record may be: absent, or a name at a version (`None`: written by an operation
/// whose answer was lost, so its version is not known yet).
pub type State = Option<(String, Option<u64>)>;

/// The states a record may be in after an operation takes effect in `state`, given what it
/// returned. Empty: it cannot take effect there.
pub fn step(state: &State, call: &Call, outcome: &Outcome) -> Vec<State> {
    use Outcome::*;
    let matches = |version: &Option<u64>, expected: u64| version.is_none_or(|v| v == expected);
    match (call, outcome) {
        (Call::Read, Read(None)) => match state {
            None => vec![None],
            Some(_) => vec![],
        },
        (Call::Read, Read(Some((name, version)))) => match state {
            Some((n, v)) if n == name && matches(v, *version) => {
                vec![Some((name.clone(), Some(*version)))]
            }
            _ => vec![],
        },
        (Call::Read, _) => vec![state.clone()],
        (Call::Create(name), Written(version)) => match state {
            None => vec![Some((name.clone(), Some(*version)))],
            Some(_) => vec![],
        },
        (Call::Create(_), Refused(Refusal::Exists)) => match state {
            Some(_) => vec![state.clone()],
            None => vec![],
        },
        (Call::Create(name), Unknown) => match state {
            None => vec![Some((name.clone(), None))],
            Some(_) => vec![state.clone()],
        },
        (Call::Update(name), Written(version)) => match state {
            Some(_) => vec![Some((name.clone(), Some(*version)))],
            None => vec![],
        },
        (Call::Update(name), Unknown) => match state {
            Some(_) => vec![Some((name.clone(), None))],
            None => vec![None],
        },
        (Call::Cas(expected, name), Written(version)) => match state {
            Some((_, v)) if matches(v, *expected) => vec![Some((name.clone(), Some(*version)))],
            _ => vec![],
        },
        (Call::Cas(expected, _), Refused(Refusal::Mismatch)) => match state {
            Some((_, v)) if *v != Some(*expected) => vec![state.clone()],
            _ => vec![],
        },
        (Call::Cas(expected, name), Unknown) => match state {
            Some((_, None)) => vec![Some((name.clone(), None)), state.clone()],
            Some((_, Some(v))) if v == expected => vec![Some((name.clone(), None))],
            _ => vec![state.clone()],
        },
        (Call::Delete, Written(_)) => match state {
            Some(_) => vec![None],
            None => vec![],
        },
        (Call::Delete, Unknown) => vec![None],
        (Call::Update(_) | Call::Cas(..) | Call::Delete, Refused(Refusal::Missing)) => {
            match state {
                None => vec![None],
                Some(_) => vec![],
            }
        }
        _ => vec![],
    }
}

/// A set of states, sorted and without duplicates.
type States = Vec<State>;

fn step_all(states: &States, op: &Operation) -> States {
    let mut next: States = states
        .iter()
        .flat_map(|s| step(s, &op.call, &op.outcome))
        .collect();
    next.sort();
    next.dedup();
    next
}

/// How many search steps one record's history may take before the check gives up.
const STEP_BUDGET: u64 = 50_000_000;

/// A history that no order of its operations explains.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The record.
    pub key: String,
    /// The smallest window of operations that cannot be ordered, and why, for people.
    pub report: String,
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every record's history is linearizable.
    Linearizable,
    /// These records' histories are not.
    Violations(Vec<Violation>),
    /// The search exceeded its budget on this record (neither proven nor refuted).
    Inconclusive(String),
}

/// Checks every record's sub-history of `operations`.
pub fn check(operations: &[Operation]) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in operations {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut violations = Vec::new();
    for (key, ops) in by_key {
        match check_key(&ops) {
            Ok(()) => {}
            Err(Failure::Violation(report)) => violations.push(Violation {
                key: key.to_owned(),
                report,
            }),
            Err(Failure::Budget) => return Verdict::Inconclusive(key.to_owned()),
        }
    }
    if violations.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Violations(violations)
    }
}

enum Failure {
    Violation(String),
    Budget,
}

/// One event of the history: an operation's call or return.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
}

/// A set of operations, as bits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

fn check_key(all: &[Operation]) -> Result<(), Failure> {
    // A read with no answer changes nothing and constrains nothing.
    let ops: Vec<&Operation> = all
        .iter()
        .filter(|op| !(op.call == Call::Read && op.outcome == Outcome::Unknown))
        .collect();
    // Events in time order; at equal times calls first (the operations overlap).
    let mut events: Vec<(u64, bool, Event)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, Event { op: i, call: true }));
        if op.outcome != Outcome::Unknown {
            events.push((op.completed, true, Event { op: i, call: false }));
        }
    }
    events.sort_by_key(|&(time, is_return, _)| (time, is_return));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();
    let n = events.len();
    // A doubly linked list over the events; index n is the head sentinel.
    let mut next: Vec<usize> = (1..=n).chain([0]).collect();
    let mut prev: Vec<usize> = std::iter::once(n).chain(0..n).collect();
    next[n] = if n == 0 { n } else { 0 };
    next.resize(n + 1, n);
    if n > 0 {
        next[n - 1] = n;
        prev[0] = n;
    }
    let mut return_of = vec![None; ops.len()];
    for (i, e) in events.iter().enumerate() {
        if !e.call {
            return_of[e.op] = Some(i);
        }
    }
    let unlink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        prev[nx] = p;
    };
    let relink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        prev[nx] = i;
    };

    let mut remaining_returns = return_of.iter().filter(|r| r.is_some()).count();
    let mut linearized = Bits::new(ops.len());
    let mut cache: HashSet<(Bits, States)> = HashSet::new();
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut states: States = vec![None];
    let mut entry = next[n];
    let mut steps = 0u64;
    // The deepest point reached: (operations linearized, the return that stopped it, states).
    let mut deepest: (usize, usize, States) = (0, usize::MAX, states.clone());
    while remaining_returns > 0 {
        steps += 1;
        if steps > STEP_BUDGET {
            return Err(Failure::Budget);
        }
        if entry != n && events[entry].call {
            let op = events[entry].op;
            let after = step_all(&states, ops[op]);
            if !after.is_empty() {
                let mut bits = linearized.clone();
                bits.set(op);
                if cache.insert((bits.clone(), after.clone())) {
                    stack.push((entry, std::mem::replace(&mut states, after)));
                    linearized = bits;
                    unlink(entry, &mut next, &mut prev);
                    if let Some(r) = return_of[op] {
                        unlink(r, &mut next, &mut prev);
                        remaining_returns -= 1;
                    }
                    entry = next[n];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return (or the end) before its operation could be linearized: backtrack.
            if stack.len() >= deepest.0 && entry != n {
                deepest = (stack.len(), events[entry].op, states.clone());
            }
            let Some((call, before)) = stack.pop() else {
                return Err(Failure::Violation(report(&ops, deepest)));
            };
            let op = events[call].op;
            states = before;
            linearized.clear(op);
            if let Some(r) = return_of[op] {
                relink(r, &mut next, &mut prev);
                remaining_returns += 1;
            }
            relink(call, &mut next, &mut prev);
            entry = next[call];
        }
    }
    Ok(())
}

/// The window around the operation whose return the search could not get past.
fn report(ops: &[&Operation], (linearized, stuck, states): (usize, usize, States)) -> String {
    let mut out = String::new();
    let Some(stuck_op) = ops.get(stuck) else {
        return "no operation could be linearized".into();
    };
    let _ = writeln!(
        out,
        "after {linearized} operations linearized, the record could be {states:?}; no order of \
         these operations (concurrent with the one marked >>) explains them:"
    );
    let mut window: Vec<(usize, &&Operation)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            let open_end = op.outcome == Outcome::Unknown;
            op.invoked <= stuck_op.completed && (open_end || op.completed >= stuck_op.invoked)
        })
        .collect();
    window.sort_by_key(|(_, op)| op.invoked);
    for (i, op) in window.into_iter().take(40) {
        let mark = if i == stuck { ">>" } else { "  " };
        let _ = writeln!(
            out,
            "{mark} client {} [{:>10.3} ms .. {:>10.3} ms] {:?} -> {:?}",
            op.client,
            op.invoked as f64 / 1000.0,
            op.completed as f64 / 1000.0,
            op.call,
            op.outcome
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation on record "k" by `client`, from `invoked` to `completed` ms.
    fn op(client: usize, invoked: u64, completed: u64, call: Call, outcome: Outcome) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            invoked: invoked * 1000,
            completed: completed * 1000,
            outcome,
        }
    }

    fn create(name: &str) -> Call {
        Call::Create(name.into())
    }

    fn read(name: &str, version: u64) -> Outcome {
        Outcome::Read(Some((name.into(), version)))
    }

    fn linearizable(history: &[Operation]) -> bool {
        match check(history) {
            Verdict::Linearizable => true,
            Verdict::Violations(v) => {
                eprintln!("{}", v[0].report);
                false
            }
            Verdict::Inconclusive(key) => panic!("inconclusive on {key}"),
        }
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_is_linearizable() {
        let history = [
            op(0, 0, 1, Call::Read, Outcome::Read(None)),
            op(0, 2, 3, create("a"), Outcome::Written(5)),
            op(1, 4, 5, Call::Read, read("a", 5)),
            op(1, 6, 7, Call::Cas(5, "b".into()), Outcome::Written(8)),
            op(
                0,
                8,
                9,
                Call::Cas(5, "c".into()),
                Outcome::Refused(Refusal::Mismatch),
            ),
            op(0, 10, 11, Call::Update("d".into()), Outcome::Written(9)),
            op(1, 12, 13, Call::Delete, Outcome::Written(0)),
            op(1, 14, 15, Call::Delete, Outcome::Refused(Refusal::Missing)),
            op(0, 16, 17, create("e"), Outcome::Written(11)),
            op(1, 18, 19, create("f"), Outcome::Refused(Refusal::Exists)),
        ];
        assert!(linearizable(&history));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // The read overlaps the update and sees it; the second read, later, must too.
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 10, Call::Update("b".into()), Outcome::Written(2)),
            op(0, 3, 4, Call::Read, read("b", 2)),
            op(2, 5, 6, Call::Read, read("b", 2)),
        ];
        assert!(linearizable(&history));
        // Reads overlapping the update may also see the old value, in either order.
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 10, Call::Update("b".into()), Outcome::Written(2)),
            op(0, 3, 4, Call::Read, read("a", 1)),
            op(2, 5, 6, Call::Read, read("b", 2)),
        ];
        assert!(linearizable(&history));
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let never = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 3, Call::Update("x".into()), Outcome::Unknown),
            op(0, 4, 5, Call::Read, read("a", 1)),
        ];
        assert!(linearizable(&never));
        let late = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 3, Call::Update("x".into()), Outcome::Unknown),
            op(0, 4, 5, Call::Read, read("a", 1)),
            op(0, 6, 7, Call::Read, read("x", 9)),
            op(0, 8, 9, Call::Cas(9, "y".into()), Outcome::Written(10)),
        ];
        assert!(linearizable(&late));
    }

    #[test]
    fn two_successful_creates_without_a_delete_are_a_violation() {
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 3, create("b"), Outcome::Written(2)),
        ];
        assert!(!linearizable(&history));
    }

    #[test]
    fn a_stale_read_after_a_newer_one_is_a_violation() {
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(0, 2, 3, Call::Update("b".into()), Outcome::Written(2)),
            op(1, 4, 5, Call::Read, read("b", 2)),
            op(1, 6, 7, Call::Read, read("a", 1)),
        ];
        assert!(!linearizable(&history));
    }

    #[test]
    fn a_refusal_that_later_shows_as_applied_is_a_violation() {
        // The update was answered 404, yet a later read shows its name.
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(0, 2, 3, Call::Delete, Outcome::Written(0)),
            op(
                1,
                4,
                5,
                Call::Update("x".into()),
                Outcome::Refused(Refusal::Missing),
            ),
            op(1, 6, 7, create("c"), Outcome::Written(5)),
            op(0, 8, 9, Call::Read, read("x", 6)),
        ];
        assert!(!linearizable(&history));
    }

    #[test]
    fn a_412_while_the_record_held_that_version_is_a_violation() {
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(4)),
            op(
                1,
                2,
                3,
                Call::Cas(4, "b".into()),
                Outcome::Refused(Refusal::Mismatch),
            ),
            op(0, 4, 5, Call::Read, read("a", 4)),
        ];
        assert!(!linearizable(&history));
    }

    #[test]
    fn a_violation_names_the_operations_it_cannot_order() {
        let history = [
            op(0, 0, 1, create("a"), Outcome::Written(1)),
            op(1, 2, 3, Call::Delete, Outcome::Written(0)),
            op(2, 4, 5, Call::Delete, Outcome::Written(0)),
        ];
        let Verdict::Violations(found) = check(&history) else {
            panic!("two deletes both succeeded");
        };
        assert_eq!(found[0].key, "k");
        assert!(
            found[0].report.contains(">> client 2"),
            "{}",
            found[0].report
        );
    }

    #[test]
    fn records_are_checked_apart() {
        let mut other = op(1, 2, 3, create("b"), Outcome::Written(2));
        other.key = "other".into();
        let history = [op(0, 0, 1, create("a"), Outcome::Written(1)), other];
        assert!(linearizable(&history));
    }

    #[test]
    fn a_long_concurrent_history_checks_quickly() {
        // 6 clients, 3,000 operations on one record, each client's ops overlapping the others'.
        let mut history = Vec::new();
        let mut version = 1;
        history.push(op(0, 0, 1, create("v1"), Outcome::Written(1)));
        for i in 0..3000u64 {
            let client = (i % 6) as usize;
            let t = 10 + i * 2;
            if i % 3 == 0 {
                version += 1;
                let name = format!("v{version}");
                history.push(op(
                    client,
                    t,
                    t + 5,
                    Call::Update(name),
                    Outcome::Written(version),
                ));
            } else {
                // A read that overlaps the next update sees the value written before it.
                let name = format!("v{version}");
                history.push(op(client, t, t + 1, Call::Read, read(&name, version)));
            }
        }
        let started = std::time::Instant::now();
        assert!(linearizable(&history));
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
