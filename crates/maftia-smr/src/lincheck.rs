//! Linearizability checking of recorded client histories (the verdict `maftia demo` prints and
//! the SMR tests assert).
//!
//! **What it decides.** Given a sequential specification (a [`Model`]: a deterministic state
//! machine from calls to responses) and a concurrent history of [`Operation`]s, each with an
//! invocation time and (if the client learned it) a completion time and response, [`check`]
//! answers whether some total order of the operations (a) respects real time — if `a` completed
//! before `b` was invoked, `a` comes first — and (b) makes every observed response the one the
//! model returns when the operations are applied in that order from `initial` (Herlihy & Wing
//! 1990). An operation whose outcome the client never learned (`complete` or `response` is
//! `None`: a timeout or a crash) may take effect at any point after its invocation or not at all,
//! and any response is accepted for it (the `:info` semantics of Knossos). Intervals are closed:
//! an operation completing at time `t` and one invoked at `t` are concurrent.
//!
//! **Algorithm.** Wing & Gong 1993 ("Testing and verifying concurrent objects", JPDC 17): a
//! depth-first search that repeatedly linearizes a *minimal* operation — one whose invocation
//! precedes the completion of every operation not yet linearized — and backtracks when the first
//! pending completion is reached with its operation not linearized. The history is a doubly
//! linked list of invocation and completion events in time order; linearizing an operation
//! unlinks both of its events and backtracking relinks them (dancing links). Lowe 2017 ("Testing
//! for linearizability", Concurrency and Computation 29(4)) adds memoization: a configuration is
//! the set of linearized operations (a bitset) together with the model state (its
//! [`Model::fingerprint`]); a configuration reached before is never explored again. This is the
//! "WGL" algorithm of Knossos and porcupine.
//!
//! **P-compositionality** (Horn & Kroening 2015, "Faster linearizability checking via
//! P-compositionality", FORTE): when the model is a product of independent parts (the keys of a
//! key-value store), a history is linearizable iff each sub-history over a group of parts is.
//! [`check`] unions operations whose footprints ([`Model::partition_keys`], plus every key named
//! anywhere in the history that falls in one of the call's [`Model::partition_intervals`])
//! intersect; a call with neither keys nor intervals touches everything. Each connected component
//! is searched separately from `initial`. This is sound because components touch disjoint parts,
//! and a part no call of the history names never changes, so it reads the same in every component
//! (linearizability is local: Herlihy & Wing 1990, Theorem 1). For [`KvModel`] a range scan
//! reads exactly the keys in `[start, end)` — including the order-dependent `limit` cut and
//! `resume_from`, both of which lie inside the range — so it joins every key named in the history
//! within that range and no other: a scan that shows one write but misses an earlier one on
//! another key is caught.
//!
//! **Complexity.** Deciding linearizability is NP-complete (Gibbons & Korach 1997), so the search
//! is exponential in the worst case: at most `2^k · S` configurations for a component of `k`
//! operations and `S` distinct model states. On histories where at most `c` operations overlap
//! (c clients), the memoized search visits O(k · 2^c) configurations in the worst case and close
//! to `k · c` on typical histories. Each step costs one model clone, one [`Model::apply`], one
//! fingerprint and O(k / 64) for the bitset. Partitioning costs O(m · (keys per call) · log K +
//! Σ_range (named keys in range)) for `m` operations and `K` distinct keys.
//!
//! **Search budget.** `budget` bounds the total number of search steps over all components (a
//! step tries one event of the list); when it runs out the verdict is [`Verdict::Unknown`], never
//! a guess. Components are searched smallest first, so a violation in a small component is found
//! before a big one eats the budget. The memo cache gains at most one entry per step, so memory is
//! O(budget · (k / 64 + 32 bytes)). [`DEFAULT_SEARCH_BUDGET`] suits histories of many thousands of
//! operations.
//!
//! **Operations with an unknown outcome** are the expensive part (any subset of them may have
//! taken effect, each at any later point). Two refinements keep linearizable histories near
//! linear time (8 clients × 500 operations in one 4000-operation component take ≈ 20k steps):
//! completed candidates are tried before pending ones, so a pending operation is linearized only
//! when nothing else can go next; and at such a dead end only pending operations whose
//! footprint is connected to a blocked candidate's are tried (sound by a commutation argument,
//! see `connected_pending`). *Refuting* a history still means exhausting every linearization of
//! the operations before the violation: in one large component with many unknown outcomes, a
//! violation late in the history may end as `Unknown` (never as `Linearizable`). Small
//! components (single-key workloads) refute in a few steps per operation.
//!
//! Client ids are used only in explanations: the checker does not require a client's operations
//! to be sequential.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Debug, Write as _};
use std::ops::Bound;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::kv::{KvReply, KvRequest, KvStore};
use crate::StateMachine;

/// A search budget that checks histories of several thousand KV operations from a handful of
/// clients with a wide margin while keeping the memo cache in the low hundreds of megabytes at
/// worst.
pub const DEFAULT_SEARCH_BUDGET: usize = 1_000_000;

/// Longest rendering of one call or response in an explanation, in characters.
const MAX_RENDERED_CHARS: usize = 160;
/// Most candidates listed in an explanation.
const MAX_LISTED_CANDIDATES: usize = 8;
/// Most operations of the deepest linearized prefix listed in an explanation.
const MAX_LISTED_PREFIX: usize = 6;

/// A half-open interval of keys `[start, end)`, `end == None` meaning no upper bound.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyInterval {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyInterval {
    /// Whether `key` lies in the interval.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|end| key < end.as_slice())
    }
}

/// A sequential specification: a deterministic object that the checked history should behave
/// like.
///
/// For P-compositionality the model must be a product of independent parts named by byte-string
/// keys: applying a call reads and changes only the parts named by [`Model::partition_keys`] and
/// those in [`Model::partition_intervals`], and its response depends only on them. A model
/// without such structure returns no keys and no intervals for every call, and the whole history
/// is searched as one.
pub trait Model: Clone {
    type Call: Clone + Debug;
    type Response: Clone + Debug + PartialEq;

    /// Apply one call and return its response (must be deterministic and must not panic).
    fn apply(&mut self, call: &Self::Call) -> Self::Response;

    /// A collision-resistant digest of the state, for the memo cache: equal states must give
    /// equal fingerprints. A collision between different states can only make the search skip a
    /// configuration (a false "not linearizable"), with probability about 2^-128 for a 256-bit
    /// cryptographic hash.
    fn fingerprint(&self) -> [u8; 32];

    /// The keys `call` touches. Empty together with [`Model::partition_intervals`]: the call
    /// touches everything.
    fn partition_keys(call: &Self::Call) -> Vec<Vec<u8>>;

    /// Key intervals `call` reads or writes as a whole (a range scan): the call is grouped with
    /// every key named by some call of the history that falls in one of them. Keys that no call
    /// names keep their initial value, so they need no grouping. Default: none.
    fn partition_intervals(_call: &Self::Call) -> Vec<KeyInterval> {
        Vec::new()
    }
}

/// One operation of a recorded history. Times are in any unit, only their order matters.
///
/// `complete == None` or `response == None`: the client never learned the outcome (timeout or
/// crash); the operation may have taken effect at any point after `invoke`, or never, with any
/// response. (A response recorded without a completion time is therefore ignored.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<C, R> {
    pub client: u64,
    pub invoke: u64,
    pub complete: Option<u64>,
    pub call: C,
    pub response: Option<R>,
}

impl<C, R> Operation<C, R> {
    /// An operation whose client received `response` at time `complete`.
    pub fn completed(client: u64, invoke: u64, complete: u64, call: C, response: R) -> Self {
        Self {
            client,
            invoke,
            complete: Some(complete),
            call,
            response: Some(response),
        }
    }

    /// An operation whose outcome the client never learned.
    pub fn pending(client: u64, invoke: u64, call: C) -> Self {
        Self {
            client,
            invoke,
            complete: None,
            call,
            response: None,
        }
    }

    /// Whether the outcome is unknown (see the type's documentation).
    pub fn is_pending(&self) -> bool {
        self.complete.is_none() || self.response.is_none()
    }
}

/// The answer of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations respects real time and the model.
    Linearizable,
    /// No such order exists. `operations` (indices into the history, ascending) form a
    /// sub-history that is not linearizable on its own; `partition_keys` are the keys they name
    /// (empty for a model without keys). `frontier` lists the operations at the deepest point the
    /// search reached: the operation that had to take effect next and the candidates that could
    /// not. `explanation` says the same in words.
    NotLinearizable {
        partition_keys: Vec<Vec<u8>>,
        operations: Vec<usize>,
        frontier: Vec<usize>,
        explanation: String,
    },
    /// The history is malformed or the search budget ran out; nothing was decided.
    Unknown { reason: String },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable { explanation, .. } => {
                write!(f, "NOT linearizable: {explanation}")
            }
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// The verdict of [`check_report`] with statistics for a summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub verdict: Verdict,
    /// Operations in the history.
    pub operations: usize,
    /// Independent components the history split into.
    pub components: usize,
    /// Operations in the largest component.
    pub largest_component: usize,
    /// Search steps spent (at most the budget).
    pub steps: usize,
}

/// Decide whether `history` is linearizable with respect to `initial`, spending at most `budget`
/// search steps (see the module documentation).
pub fn check<M: Model>(
    initial: &M,
    history: &[Operation<M::Call, M::Response>],
    budget: usize,
) -> Verdict {
    check_report(initial, history, budget).verdict
}

/// [`check`], with statistics.
pub fn check_report<M: Model>(
    initial: &M,
    history: &[Operation<M::Call, M::Response>],
    budget: usize,
) -> CheckReport {
    let mut report = CheckReport {
        verdict: Verdict::Linearizable,
        operations: history.len(),
        components: 0,
        largest_component: 0,
        steps: 0,
    };
    if let Some(reason) = malformed(history) {
        report.verdict = Verdict::Unknown { reason };
        return report;
    }
    let mut components = partition::<M>(history);
    report.components = components.len();
    report.largest_component = components.iter().map(|c| c.ops.len()).max().unwrap_or(0);
    components.sort_by_key(|c| (c.ops.len(), c.ops.first().copied()));
    let mut remaining = budget;
    for component in &components {
        let outcome = search(initial, history, component, &mut remaining);
        report.steps = budget - remaining;
        match outcome {
            Outcome::Linearizable => {}
            Outcome::OutOfBudget => {
                report.verdict = Verdict::Unknown {
                    reason: format!(
                        "search budget of {budget} steps exhausted in a component of {} \
                         operations over {}",
                        component.ops.len(),
                        describe_keys(component)
                    ),
                };
                return report;
            }
            Outcome::NotLinearizable(dead_end) => {
                let (frontier, explanation) = explain(history, component, dead_end);
                report.verdict = Verdict::NotLinearizable {
                    partition_keys: component.keys.clone(),
                    operations: component.ops.clone(),
                    frontier,
                    explanation,
                };
                return report;
            }
        }
    }
    report
}

/// Why the history cannot be checked at all, if it cannot.
fn malformed<C, R>(history: &[Operation<C, R>]) -> Option<String> {
    history
        .iter()
        .enumerate()
        .find_map(|(index, op)| match op.complete {
            Some(complete) if complete < op.invoke => Some(format!(
                "operation #{index} completes at {complete}, before its invocation at {}",
                op.invoke
            )),
            _ => None,
        })
}

// ---------------------------------------------------------------------------------------------
// Partitioning (P-compositionality).

/// A connected component of the "footprints intersect" relation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Component {
    /// History indices, ascending.
    ops: Vec<usize>,
    /// Keys named by the component's calls, ascending.
    keys: Vec<Vec<u8>>,
    /// Whether some call touches everything.
    global: bool,
}

struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        let mut root = x;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        while self.parent[x] != root {
            let next = self.parent[x];
            self.parent[x] = root;
            x = next;
        }
        root
    }

    fn union(&mut self, a: usize, b: usize) {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra;
        self.size[ra] += self.size[rb];
    }
}

/// Split `history` into components whose footprints are disjoint, in order of first operation.
fn partition<M: Model>(history: &[Operation<M::Call, M::Response>]) -> Vec<Component> {
    let mut sets = UnionFind::new(history.len());
    // The first operation naming each key; every later one is joined to it.
    let mut key_owner: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut intervals: Vec<(usize, KeyInterval)> = Vec::new();
    let mut first_global: Option<usize> = None;
    for (index, op) in history.iter().enumerate() {
        let keys = M::partition_keys(&op.call);
        let call_intervals = M::partition_intervals(&op.call);
        if keys.is_empty() && call_intervals.is_empty() {
            match first_global {
                None => first_global = Some(index),
                Some(global) => sets.union(global, index),
            }
            continue;
        }
        for key in keys {
            let owner = *key_owner.entry(key).or_insert(index);
            sets.union(owner, index);
        }
        intervals.extend(call_intervals.into_iter().map(|interval| (index, interval)));
    }
    for (index, interval) in &intervals {
        let upper = match &interval.end {
            // `BTreeMap::range` panics on an inverted range; an empty interval holds no key.
            Some(end) if *end <= interval.start => continue,
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        let owners: Vec<usize> = key_owner
            .range::<[u8], _>((Bound::Included(interval.start.as_slice()), upper))
            .map(|(_, owner)| *owner)
            .collect();
        for owner in owners {
            sets.union(*index, owner);
        }
    }
    if let Some(global) = first_global {
        for index in 0..history.len() {
            sets.union(global, index);
        }
    }

    let mut component_of_root: BTreeMap<usize, usize> = BTreeMap::new();
    let mut components: Vec<Component> = Vec::new();
    for index in 0..history.len() {
        let root = sets.find(index);
        let slot = *component_of_root.entry(root).or_insert_with(|| {
            components.push(Component::default());
            components.len() - 1
        });
        components[slot].ops.push(index);
        if first_global == Some(index) {
            components[slot].global = true;
        }
    }
    for (key, owner) in key_owner {
        let root = sets.find(owner);
        if let Some(&slot) = component_of_root.get(&root) {
            components[slot].keys.push(key);
        }
    }
    components
}

// ---------------------------------------------------------------------------------------------
// The WGL search.

/// End of a list.
const NIL: usize = usize::MAX;

/// A set of component-local operation indices.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OpSet(Vec<u64>);

impl OpSet {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }
    fn insert(&mut self, op: usize) {
        self.0[op / 64] |= 1 << (op % 64);
    }
    fn remove(&mut self, op: usize) {
        self.0[op / 64] &= !(1 << (op % 64));
    }
}

/// The deepest point a failed search reached, for the explanation.
struct DeadEnd<M> {
    /// Linearized operations, in order (component-local indices).
    prefix: Vec<usize>,
    /// The operation whose completion was reached without it being linearized.
    blocking: usize,
    /// The operations that could have gone next (each was tried and failed).
    candidates: Vec<usize>,
    /// The model state after `prefix`.
    state: M,
}

enum Outcome<M> {
    Linearizable,
    OutOfBudget,
    NotLinearizable(DeadEnd<M>),
}

/// The events of one component as two doubly linked lists (Wing & Gong's history list).
///
/// Node layout: the invocation of local operation `j` is node `2j + 1`, its completion node
/// `2j + 2`; node 0 heads the *completed list* (invocations and completions of the operations
/// with a known outcome, in time order: invocations before completions at equal times, because
/// intervals are closed), node `2k + 1` heads the *pending list* (invocations of the operations
/// with an unknown outcome, by invocation time; their completion is at infinity, so their
/// completion nodes are unused).
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Invocation time of each call node and completion time of each completion node.
    time: Vec<u64>,
    pending: Vec<bool>,
    pending_head: usize,
}

const COMPLETED_HEAD: usize = 0;

impl EventList {
    fn call_node(op: usize) -> usize {
        2 * op + 1
    }
    fn is_call(node: usize) -> bool {
        node % 2 == 1
    }
    fn op_of(node: usize) -> usize {
        (node - 1) / 2
    }

    fn new<C, R>(history: &[Operation<C, R>], ops: &[usize]) -> Self {
        let pending_head = 2 * ops.len() + 1;
        let nodes = pending_head + 1;
        let mut list = Self {
            next: vec![NIL; nodes],
            prev: vec![NIL; nodes],
            time: vec![0; nodes],
            pending: vec![false; ops.len()],
            pending_head,
        };
        let mut completed: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        let mut pending: Vec<(u64, usize)> = Vec::new();
        for (local, &index) in ops.iter().enumerate() {
            let op = &history[index];
            let call = Self::call_node(local);
            list.time[call] = op.invoke;
            match (op.complete, &op.response) {
                (Some(complete), Some(_)) => {
                    list.time[call + 1] = complete;
                    completed.push((op.invoke, false, call));
                    completed.push((complete, true, call + 1));
                }
                _ => {
                    list.pending[local] = true;
                    pending.push((op.invoke, call));
                }
            }
        }
        completed.sort_unstable();
        pending.sort_unstable();
        list.link(COMPLETED_HEAD, completed.iter().map(|&(_, _, node)| node));
        list.link(pending_head, pending.iter().map(|&(_, node)| node));
        list
    }

    fn link(&mut self, head: usize, nodes: impl Iterator<Item = usize>) {
        let mut last = head;
        for node in nodes {
            self.next[last] = node;
            self.prev[node] = last;
            last = node;
        }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }

    /// Remove a linearized operation's events (Wing & Gong's `lift`).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if !self.pending[Self::op_of(call)] {
            self.unlink(call + 1);
        }
    }

    /// Undo the matching [`EventList::lift`] (must be the most recent one not yet undone).
    fn unlift(&mut self, call: usize) {
        if !self.pending[Self::op_of(call)] {
            self.relink(call + 1);
        }
        self.relink(call);
    }

    /// The completed and pending candidates before `deadline` (the first completion), as
    /// component-local operations: completed first, pending in invocation order.
    fn candidate_split(&self, deadline: usize) -> (Vec<usize>, Vec<usize>) {
        let mut completed = Vec::new();
        let mut node = self.next[COMPLETED_HEAD];
        while node != deadline && node != NIL {
            if Self::is_call(node) {
                completed.push(Self::op_of(node));
            }
            node = self.next[node];
        }
        let mut pending = Vec::new();
        let mut node = self.next[self.pending_head];
        while node != NIL && (deadline == NIL || self.time[node] <= self.time[deadline]) {
            pending.push(Self::op_of(node));
            node = self.next[node];
        }
        (completed, pending)
    }

    /// Every candidate at this point (for the explanation).
    fn candidates(&self, deadline: usize) -> Vec<usize> {
        let (mut completed, pending) = self.candidate_split(deadline);
        completed.extend(pending);
        completed
    }
}

/// Which keys of its component an operation touches (ids into the component's key list);
/// `None`: everything.
type Footprint = Option<Vec<u32>>;

fn footprints<M: Model>(
    history: &[Operation<M::Call, M::Response>],
    component: &Component,
) -> Vec<Footprint> {
    let key_ids: BTreeMap<&[u8], u32> = component
        .keys
        .iter()
        .zip(0u32..)
        .map(|(key, id)| (key.as_slice(), id))
        .collect();
    component
        .ops
        .iter()
        .map(|&index| {
            let call = &history[index].call;
            let keys = M::partition_keys(call);
            let intervals = M::partition_intervals(call);
            if keys.is_empty() && intervals.is_empty() {
                return None;
            }
            let mut ids: BTreeSet<u32> = keys
                .iter()
                .filter_map(|key| key_ids.get(key.as_slice()).copied())
                .collect();
            for interval in &intervals {
                ids.extend(
                    key_ids
                        .iter()
                        .filter(|(key, _)| interval.contains(key))
                        .map(|(_, id)| *id),
                );
            }
            Some(ids.into_iter().collect())
        })
        .collect()
}

/// The pending candidates worth trying once every completed candidate has failed: those whose
/// footprint is connected, through the footprints of other pending candidates, to that of some
/// completed candidate (the blocked operation among them).
///
/// Completeness: a pending operation has no completion, so real time never forces it before
/// anything; and in a product model (the [`Model`] contract) operations with disjoint footprints
/// commute, with unchanged responses. So in any valid continuation, the pending operations not
/// connected this way can all be moved to just after the blocked operation, which yields a valid
/// continuation that starts with a completed or a connected pending candidate. Skipping the
/// others prunes only branches that would re-explore the same dead end with unrelated writes
/// applied — the source of exponential blow-up with operations whose outcome is unknown.
fn connected_pending(
    completed: &[usize],
    pending: &[usize],
    footprints: &[Footprint],
) -> Vec<usize> {
    let mut touched: BTreeSet<u32> = BTreeSet::new();
    for &op in completed {
        match &footprints[op] {
            Some(keys) => touched.extend(keys.iter().copied()),
            None => return pending.to_vec(),
        }
    }
    let mut chosen = vec![false; pending.len()];
    loop {
        let mut changed = false;
        for (slot, &op) in pending.iter().enumerate() {
            if chosen[slot] {
                continue;
            }
            match &footprints[op] {
                None => return pending.to_vec(),
                Some(keys) if keys.iter().any(|key| touched.contains(key)) => {
                    chosen[slot] = true;
                    touched.extend(keys.iter().copied());
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if !changed {
            break;
        }
    }
    pending
        .iter()
        .zip(chosen)
        .filter(|(_, chosen)| *chosen)
        .map(|(&op, _)| op)
        .collect()
}

/// Where the search is in the enumeration of the current configuration's candidates.
#[derive(Clone)]
enum Cursor {
    /// Walking the completed list (a call node, or the first completion, or `NIL`).
    Completed(usize),
    /// Trying `ops[position..]`, the connected pending candidates (component-local operations)
    /// before `deadline`, the first completion of the completed list.
    Pending {
        ops: Rc<Vec<usize>>,
        position: usize,
        deadline: usize,
    },
}

/// Search one component.
///
/// The candidates of a configuration are the invocations that precede the first completion of
/// an unlinearized operation (Wing & Gong's minimal operations). Completed operations are tried
/// before pending ones, so an operation with an unknown outcome is linearized only once no
/// completed one can go next — usually just before the read that observed it — instead of as
/// early as possible, which would make the search explore every later choice before finding out
/// that it took effect too early (or never did); and only connected pending operations are tried
/// (see [`connected_pending`]).
fn search<M: Model>(
    initial: &M,
    history: &[Operation<M::Call, M::Response>],
    component: &Component,
    budget: &mut usize,
) -> Outcome<M> {
    let ops = &component.ops;
    let mut list = EventList::new(history, ops);
    let footprints = footprints::<M>(history, component);
    let expected: Vec<Option<&M::Response>> = ops
        .iter()
        .map(|&index| {
            let op = &history[index];
            op.complete.and(op.response.as_ref())
        })
        .collect();
    let mut state = initial.clone();
    let mut linearized = OpSet::new(ops.len());
    // Linearized call nodes with the state before them and the cursor to resume from.
    let mut stack: Vec<(usize, M, Cursor)> = Vec::new();
    let mut seen: BTreeSet<(OpSet, [u8; 32])> = BTreeSet::new();
    let mut deepest: Option<DeadEnd<M>> = None;
    let mut cursor = Cursor::Completed(list.next[COMPLETED_HEAD]);
    loop {
        if *budget == 0 {
            return Outcome::OutOfBudget;
        }
        *budget -= 1;
        let call = match &cursor {
            Cursor::Completed(NIL) if list.next[COMPLETED_HEAD] == NIL => {
                // Every completed operation is linearized; the pending ones left over are taken
                // never to have happened.
                return Outcome::Linearizable;
            }
            &Cursor::Completed(node) if node != NIL && EventList::is_call(node) => node,
            &Cursor::Completed(deadline) => {
                // The first completion (the list always ends with one): now the connected
                // pending invocations that precede it.
                let (completed, pending) = list.candidate_split(deadline);
                cursor = Cursor::Pending {
                    ops: Rc::new(connected_pending(&completed, &pending, &footprints)),
                    position: 0,
                    deadline,
                };
                continue;
            }
            Cursor::Pending {
                ops: pending,
                position,
                ..
            } if *position < pending.len() => EventList::call_node(pending[*position]),
            &Cursor::Pending { deadline, .. } => {
                // Every candidate failed: a dead end. Backtrack.
                if deepest
                    .as_ref()
                    .is_none_or(|best| stack.len() > best.prefix.len())
                {
                    deepest = Some(DeadEnd {
                        prefix: stack
                            .iter()
                            .map(|(call, _, _)| EventList::op_of(*call))
                            .collect(),
                        blocking: if deadline == NIL {
                            0
                        } else {
                            EventList::op_of(deadline)
                        },
                        candidates: list.candidates(deadline),
                        state: state.clone(),
                    });
                }
                let Some((call, previous, resume)) = stack.pop() else {
                    return match deepest {
                        Some(dead_end) => Outcome::NotLinearizable(dead_end),
                        // Unreachable: `deepest` was set just above. Reported as a dead end
                        // at the start rather than panicking.
                        None => Outcome::NotLinearizable(DeadEnd {
                            prefix: Vec::new(),
                            blocking: 0,
                            candidates: Vec::new(),
                            state,
                        }),
                    };
                };
                state = previous;
                linearized.remove(EventList::op_of(call));
                list.unlift(call);
                cursor = advance(resume, &list, call);
                continue;
            }
        };
        let op = EventList::op_of(call);
        let mut candidate = state.clone();
        let response = candidate.apply(&history[ops[op]].call);
        if expected[op].is_none_or(|observed| *observed == response) {
            linearized.insert(op);
            if seen.insert((linearized.clone(), candidate.fingerprint())) {
                stack.push((call, std::mem::replace(&mut state, candidate), cursor));
                list.lift(call);
                cursor = Cursor::Completed(list.next[COMPLETED_HEAD]);
                continue;
            }
            linearized.remove(op);
        }
        cursor = advance(cursor, &list, call);
    }
}

/// The cursor after `call` (the candidate `cursor` points at) failed.
fn advance(cursor: Cursor, list: &EventList, call: usize) -> Cursor {
    match cursor {
        Cursor::Completed(_) => Cursor::Completed(list.next[call]),
        Cursor::Pending {
            ops,
            position,
            deadline,
        } => Cursor::Pending {
            ops,
            position: position + 1,
            deadline,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Explanations.

fn render<T: Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    if text.chars().count() <= MAX_RENDERED_CHARS {
        return text;
    }
    let mut short: String = text.chars().take(MAX_RENDERED_CHARS).collect();
    short.push('…');
    short
}

fn render_key(key: &[u8]) -> String {
    let escaped: String = key
        .iter()
        .flat_map(|&byte| std::ascii::escape_default(byte))
        .map(char::from)
        .collect();
    format!("\"{escaped}\"")
}

fn describe_keys(component: &Component) -> String {
    if component.global {
        return "the whole state".to_string();
    }
    let shown: Vec<String> = component
        .keys
        .iter()
        .take(MAX_LISTED_CANDIDATES)
        .map(|key| render_key(key))
        .collect();
    let more = component.keys.len().saturating_sub(shown.len());
    let mut text = format!("keys [{}", shown.join(", "));
    if more > 0 {
        let _ = write!(text, ", … {more} more");
    }
    text.push(']');
    text
}

fn describe_op<C: Debug, R: Debug>(index: usize, op: &Operation<C, R>) -> String {
    let mut text = format!(
        "#{index} (client {}, {}, invoked at {}",
        op.client,
        render(&op.call),
        op.invoke
    );
    match (&op.complete, &op.response) {
        (Some(complete), Some(response)) => {
            let _ = write!(text, ", completed at {complete} with {})", render(response));
        }
        _ => text.push_str(", outcome unknown)"),
    }
    text
}

/// The frontier (history indices) and a readable account of why `component` failed.
fn explain<M: Model>(
    history: &[Operation<M::Call, M::Response>],
    component: &Component,
    dead_end: DeadEnd<M>,
) -> (Vec<usize>, String) {
    let ops = &component.ops;
    let global = |local: usize| ops[local];
    let mut text = format!(
        "the {} operations over {} have no linearization. ",
        ops.len(),
        describe_keys(component)
    );
    let prefix = &dead_end.prefix;
    if prefix.is_empty() {
        text.push_str("No operation can take effect first: ");
    } else {
        let shown: Vec<String> = prefix
            .iter()
            .skip(prefix.len().saturating_sub(MAX_LISTED_PREFIX))
            .map(|&local| format!("#{}", global(local)))
            .collect();
        let _ = write!(
            text,
            "The deepest attempt linearized {} of them (ending …, {}), then: ",
            prefix.len(),
            shown.join(", ")
        );
    }
    let blocking = global(dead_end.blocking);
    let _ = write!(
        text,
        "operation {} must take effect before everything invoked after it completed, but",
        describe_op(blocking, &history[blocking])
    );
    let mut frontier = vec![blocking];
    for &local in dead_end.candidates.iter().take(MAX_LISTED_CANDIDATES) {
        let index = global(local);
        frontier.push(index);
        let op = &history[index];
        let mut model = dead_end.state.clone();
        let answer = model.apply(&op.call);
        let consistent = op
            .complete
            .and(op.response.as_ref())
            .is_none_or(|r| *r == answer);
        if consistent {
            let _ = write!(
                text,
                " #{index} ({}) fits the model here yet every continuation after it fails;",
                render(&op.call)
            );
        } else {
            let _ = write!(
                text,
                " #{index} ({}) would return {} where the client saw {};",
                render(&op.call),
                render(&answer),
                op.response
                    .as_ref()
                    .map_or_else(|| "nothing".to_string(), render)
            );
        }
    }
    let more = dead_end
        .candidates
        .len()
        .saturating_sub(MAX_LISTED_CANDIDATES);
    if more > 0 {
        let _ = write!(text, " and {more} more candidates fail;");
    }
    if text.ends_with(';') {
        text.pop();
    }
    text.push('.');
    frontier.sort_unstable();
    frontier.dedup();
    (frontier, text)
}

// ---------------------------------------------------------------------------------------------
// The key-value model.

/// The sequential specification of [`crate::kv`]: a [`KvStore`] applying [`KvRequest`]s.
///
/// Footprints: `Get`/`Put`/`Delete`/`CompareAndSet` name their key; a `Transaction` names every
/// precondition and write key (an empty transaction touches nothing); a `Range` names no key but
/// the interval `[start, end)` (see the module documentation for why this is sound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvModel(pub KvStore);

impl KvModel {
    /// The empty store (the initial state of a fresh cluster).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Model for KvModel {
    type Call = KvRequest;
    type Response = KvReply;

    fn apply(&mut self, call: &KvRequest) -> KvReply {
        self.0.apply(call.clone())
    }

    fn fingerprint(&self) -> [u8; 32] {
        self.0.digest()
    }

    fn partition_keys(call: &KvRequest) -> Vec<Vec<u8>> {
        match call {
            KvRequest::Get { key }
            | KvRequest::Put { key, .. }
            | KvRequest::Delete { key }
            | KvRequest::CompareAndSet { key, .. } => vec![key.clone()],
            KvRequest::Transaction {
                preconditions,
                writes,
            } => preconditions
                .iter()
                .chain(writes)
                .map(|(key, _)| key.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            KvRequest::Range { .. } => Vec::new(),
        }
    }

    fn partition_intervals(call: &KvRequest) -> Vec<KeyInterval> {
        match call {
            KvRequest::Range { start, end, .. } => vec![KeyInterval {
                start: start.clone(),
                end: end.clone(),
            }],
            // A transaction with no preconditions and no writes touches nothing (it always
            // commits and changes nothing): an empty interval says so, where no footprint at all
            // would mean "everything".
            KvRequest::Transaction {
                preconditions,
                writes,
            } if preconditions.is_empty() && writes.is_empty() => vec![KeyInterval {
                start: Vec::new(),
                end: Some(Vec::new()),
            }],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type KvOp = Operation<KvRequest, KvReply>;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }
    fn get(key: &str) -> KvRequest {
        KvRequest::Get { key: b(key) }
    }
    fn put(key: &str, value: &str) -> KvRequest {
        KvRequest::Put {
            key: b(key),
            value: b(value),
        }
    }
    fn cas(key: &str, expected: Option<&str>, new: Option<&str>) -> KvRequest {
        KvRequest::CompareAndSet {
            key: b(key),
            expected: expected.map(b),
            new: new.map(b),
        }
    }
    fn value(v: Option<&str>) -> KvReply {
        KvReply::Value { value: v.map(b) }
    }
    fn written(previous: Option<&str>) -> KvReply {
        KvReply::Written {
            previous: previous.map(b),
        }
    }
    fn swapped(swapped: bool, found: Option<&str>) -> KvReply {
        KvReply::CompareAndSet {
            swapped,
            found: found.map(b),
        }
    }
    fn op(client: u64, invoke: u64, complete: u64, call: KvRequest, reply: KvReply) -> KvOp {
        Operation::completed(client, invoke, complete, call, reply)
    }
    fn kv_check(history: &[KvOp]) -> Verdict {
        check(&KvModel::new(), history, DEFAULT_SEARCH_BUDGET)
    }
    fn assert_lin(history: &[KvOp]) {
        let verdict = kv_check(history);
        assert_eq!(verdict, Verdict::Linearizable, "{history:#?}");
    }
    fn assert_not_lin(history: &[KvOp]) -> (Vec<Vec<u8>>, Vec<usize>, Vec<usize>, String) {
        match kv_check(history) {
            Verdict::NotLinearizable {
                partition_keys,
                operations,
                frontier,
                explanation,
            } => (partition_keys, operations, frontier, explanation),
            other => panic!("expected NotLinearizable, got {other:?} for {history:#?}"),
        }
    }

    #[test]
    fn empty_and_sequential_histories() {
        assert_lin(&[]);
        assert_lin(&[
            op(1, 0, 1, put("x", "1"), written(None)),
            op(1, 2, 3, get("x"), value(Some("1"))),
            op(2, 4, 5, put("x", "2"), written(Some("1"))),
            op(
                2,
                6,
                7,
                KvRequest::Delete { key: b("x") },
                written(Some("2")),
            ),
            op(1, 8, 9, get("x"), value(None)),
        ]);
        // A wrong `previous` in a sequential history.
        assert_not_lin(&[
            op(1, 0, 1, put("x", "1"), written(None)),
            op(2, 2, 3, put("x", "2"), written(None)),
        ]);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let (keys, operations, frontier, explanation) = assert_not_lin(&[
            op(1, 0, 10, put("x", "1"), written(None)),
            op(2, 20, 30, get("x"), value(None)),
        ]);
        assert_eq!(keys, vec![b("x")]);
        assert_eq!(operations, vec![0, 1]);
        assert!(frontier.contains(&1), "{frontier:?}");
        assert!(
            explanation.contains("#1") && explanation.contains("\"x\""),
            "{explanation}"
        );
        assert_lin(&[
            op(1, 0, 10, put("x", "1"), written(None)),
            op(2, 20, 30, get("x"), value(Some("1"))),
        ]);
    }

    #[test]
    fn concurrent_write_and_read_linearize_either_way() {
        for seen in [None, Some("1")] {
            assert_lin(&[
                op(1, 0, 10, put("x", "1"), written(None)),
                op(2, 5, 15, get("x"), value(seen)),
            ]);
            // Closed intervals: touching at one instant is concurrent.
            assert_lin(&[
                op(1, 0, 10, put("x", "1"), written(None)),
                op(2, 10, 15, get("x"), value(seen)),
            ]);
        }
        assert_not_lin(&[
            op(1, 0, 10, put("x", "1"), written(None)),
            op(2, 5, 15, get("x"), value(Some("2"))),
        ]);
    }

    #[test]
    fn new_old_inversion_between_reads_is_not_linearizable() {
        // Reader 2 saw the new value and completed before reader 3 started, yet reader 3 saw the
        // old one: each read alone is concurrent with the write.
        assert_not_lin(&[
            op(1, 0, 100, put("x", "1"), written(None)),
            op(2, 10, 20, get("x"), value(Some("1"))),
            op(3, 30, 40, get("x"), value(None)),
        ]);
        assert_lin(&[
            op(1, 0, 100, put("x", "1"), written(None)),
            op(2, 10, 20, get("x"), value(None)),
            op(3, 30, 40, get("x"), value(Some("1"))),
        ]);
    }

    #[test]
    fn compare_and_set_races() {
        // Both concurrent CAS(None -> mine) cannot win.
        assert_not_lin(&[
            op(1, 0, 10, cas("l", None, Some("a")), swapped(true, None)),
            op(2, 0, 10, cas("l", None, Some("b")), swapped(true, None)),
        ]);
        // One wins and the loser sees the winner's value, in either order.
        for (win, lose) in [("a", "b"), ("b", "a")] {
            assert_lin(&[
                op(
                    1,
                    0,
                    10,
                    cas("l", None, Some("a")),
                    swapped(win == "a", None.or((win != "a").then_some("b"))),
                ),
                op(
                    2,
                    0,
                    10,
                    cas("l", None, Some("b")),
                    swapped(win == "b", None.or((win != "b").then_some("a"))),
                ),
                op(3, 20, 30, get("l"), value(Some(win))),
            ]);
            // The later read must see the winner, not the loser.
            assert_not_lin(&[
                op(
                    1,
                    0,
                    10,
                    cas("l", None, Some("a")),
                    swapped(win == "a", None.or((win != "a").then_some("b"))),
                ),
                op(
                    2,
                    0,
                    10,
                    cas("l", None, Some("b")),
                    swapped(win == "b", None.or((win != "b").then_some("a"))),
                ),
                op(3, 20, 30, get("l"), value(Some(lose))),
            ]);
        }
        // The loser reports finding a value nobody wrote.
        assert_not_lin(&[
            op(1, 0, 10, cas("l", None, Some("a")), swapped(true, None)),
            op(
                2,
                0,
                10,
                cas("l", None, Some("b")),
                swapped(false, Some("c")),
            ),
        ]);
    }

    #[test]
    fn transactions_are_atomic_across_keys() {
        let txn = KvRequest::Transaction {
            preconditions: vec![(b("a"), None)],
            writes: vec![(b("a"), Some(b("1"))), (b("b"), Some(b("1")))],
        };
        // Reading a's new value, then (strictly later) b's old one tears the transaction; each
        // key's sub-history alone is linearizable, so only the joined component catches it.
        assert_not_lin(&[
            op(1, 0, 100, txn.clone(), KvReply::Committed),
            op(2, 10, 20, get("a"), value(Some("1"))),
            op(2, 30, 40, get("b"), value(None)),
        ]);
        assert_lin(&[
            op(1, 0, 100, txn.clone(), KvReply::Committed),
            op(2, 10, 20, get("a"), value(Some("1"))),
            op(2, 30, 40, get("b"), value(Some("1"))),
        ]);
        // An aborted transaction changes nothing, and must name the failed precondition.
        assert_lin(&[
            op(1, 0, 10, put("a", "0"), written(None)),
            op(
                1,
                20,
                30,
                txn.clone(),
                KvReply::Aborted {
                    failed_preconditions: vec![0],
                },
            ),
            op(2, 40, 50, get("b"), value(None)),
        ]);
        assert_not_lin(&[
            op(1, 0, 10, put("a", "0"), written(None)),
            op(1, 20, 30, txn.clone(), KvReply::Committed),
        ]);
        assert_not_lin(&[
            op(1, 0, 10, put("a", "0"), written(None)),
            op(
                1,
                20,
                30,
                txn,
                KvReply::Aborted {
                    failed_preconditions: vec![0],
                },
            ),
            op(2, 40, 50, get("b"), value(Some("1"))),
        ]);
    }

    #[test]
    fn pending_operations_may_or_may_not_take_effect() {
        let pending_put = Operation::pending(1, 0, put("x", "1"));
        // Never took effect.
        assert_lin(&[pending_put.clone(), op(2, 10, 20, get("x"), value(None))]);
        // Took effect (long after its invocation, after an earlier read saw nothing).
        assert_lin(&[
            pending_put.clone(),
            op(2, 10, 20, get("x"), value(None)),
            op(2, 1000, 1010, get("x"), value(Some("1"))),
        ]);
        // Once seen it cannot be undone.
        assert_not_lin(&[
            pending_put.clone(),
            op(2, 10, 20, get("x"), value(Some("1"))),
            op(2, 30, 40, get("x"), value(None)),
        ]);
        // It cannot take effect before it was invoked.
        assert_not_lin(&[
            Operation::pending(1, 50, put("x", "1")),
            op(2, 10, 20, get("x"), value(Some("1"))),
        ]);
        // A recorded response without a completion time is ignored (outcome unknown).
        let mut odd = pending_put.clone();
        odd.response = Some(written(Some("garbage")));
        assert_lin(&[odd, op(2, 10, 20, get("x"), value(Some("1")))]);
        // A completion time without a response: also unknown.
        let mut timed_out = pending_put;
        timed_out.complete = Some(5);
        assert_lin(&[timed_out, op(2, 10, 20, get("x"), value(None))]);
    }

    #[test]
    fn pending_operations_connected_through_other_pending_ones_are_tried() {
        // The read of x needs the pending transaction, which needs the pending put of y first:
        // the put touches only y, connected to the blocked read through the transaction.
        let txn = KvRequest::Transaction {
            preconditions: vec![(b("y"), Some(b("1")))],
            writes: vec![(b("x"), Some(b("1")))],
        };
        let history = vec![
            Operation::pending(1, 0, put("y", "1")),
            Operation::pending(2, 1, txn.clone()),
            Operation::pending(3, 2, put("z", "1")),
            op(4, 10, 20, get("x"), value(Some("1"))),
        ];
        assert_lin(&history);
        // Without the put of y the transaction cannot commit.
        assert_not_lin(&[
            Operation::pending(2, 1, txn),
            Operation::pending(3, 2, put("z", "1")),
            op(4, 10, 20, get("x"), value(Some("1"))),
        ]);
    }

    #[test]
    fn range_scans_see_keys_consistently() {
        let range = |start: &str, end: Option<&str>| KvRequest::Range {
            start: b(start),
            end: end.map(b),
            limit: 10,
        };
        let entries = |pairs: &[(&str, &str)]| KvReply::Range {
            entries: pairs.iter().map(|(k, v)| (b(k), b(v))).collect(),
            resume_from: None,
        };
        let writes = [
            op(1, 0, 10, put("a", "1"), written(None)),
            op(1, 20, 30, put("b", "1"), written(None)),
        ];
        let with_scan = |reply: KvReply| {
            let mut history = writes.to_vec();
            history.push(op(2, 5, 35, range("a", Some("c")), reply));
            history
        };
        for ok in [&[][..], &[("a", "1")][..], &[("a", "1"), ("b", "1")][..]] {
            assert_lin(&with_scan(entries(ok)));
        }
        // b was written after a's write completed: seeing b without a is impossible, although
        // each key alone allows it.
        let (keys, ..) = assert_not_lin(&with_scan(entries(&[("b", "1")])));
        assert_eq!(keys, vec![b("a"), b("b")]);
        // An unbounded scan and the limit cut (resume_from inside the range).
        let mut history = writes.to_vec();
        history.push(op(
            2,
            40,
            50,
            KvRequest::Range {
                start: b("a"),
                end: None,
                limit: 1,
            },
            KvReply::Range {
                entries: vec![(b("a"), b("1"))],
                resume_from: Some(b("b")),
            },
        ));
        assert_lin(&history);
        history[2].response = Some(KvReply::Range {
            entries: vec![(b("a"), b("1"))],
            resume_from: None,
        });
        assert_not_lin(&history);
        // A scan outside the written keys sees nothing, and is its own component.
        assert_lin(&[
            writes[0].clone(),
            op(2, 40, 50, range("c", None), entries(&[])),
        ]);
        assert_not_lin(&[
            writes[0].clone(),
            op(2, 40, 50, range("c", None), entries(&[("c", "1")])),
        ]);
    }

    #[test]
    fn partition_groups_by_key_interval_and_transaction() {
        let history = vec![
            op(1, 0, 1, put("a", "1"), written(None)), // 0
            op(1, 0, 1, put("d", "1"), written(None)), // 1
            op(1, 0, 1, get("b"), value(None)),        // 2
            op(
                1,
                0,
                1,
                KvRequest::Range {
                    start: b("a"),
                    end: Some(b("c")),
                    limit: 5,
                },
                value(None),
            ), // 3
            op(1, 0, 1, get("e"), value(None)),        // 4
            op(
                1,
                0,
                1,
                KvRequest::Transaction {
                    preconditions: vec![(b("e"), None)],
                    writes: vec![(b("f"), None)],
                },
                KvReply::Committed,
            ), // 5
            op(1, 0, 1, get("f"), value(None)),        // 6
            op(
                1,
                0,
                1,
                KvRequest::Range {
                    start: b("x"),
                    end: Some(b("y")),
                    limit: 5,
                },
                value(None),
            ), // 7
            op(
                1,
                0,
                1,
                KvRequest::Range {
                    start: b("z"),
                    end: Some(b("a")),
                    limit: 5,
                },
                value(None),
            ), // 8: inverted
            op(
                1,
                0,
                1,
                KvRequest::Transaction {
                    preconditions: vec![],
                    writes: vec![],
                },
                KvReply::Committed,
            ), // 9
            op(1, 0, 1, put("c", "1"), written(None)), // 10: end is exclusive
        ];
        let components = partition::<KvModel>(&history);
        let groups: Vec<(Vec<usize>, Vec<Vec<u8>>, bool)> = components
            .into_iter()
            .map(|c| (c.ops, c.keys, c.global))
            .collect();
        assert_eq!(
            groups,
            vec![
                (vec![0, 2, 3], vec![b("a"), b("b")], false),
                (vec![1], vec![b("d")], false),
                (vec![4, 5, 6], vec![b("e"), b("f")], false),
                (vec![7], vec![], false),
                (vec![8], vec![], false),
                (vec![9], vec![], false),
                (vec![10], vec![b("c")], false),
            ]
        );
    }

    /// A FIFO queue with no key structure: exercises the generic trait and the "touches
    /// everything" footprint.
    #[derive(Clone, Default)]
    struct Queue(std::collections::VecDeque<u8>);
    #[derive(Clone, Debug)]
    enum QueueCall {
        Enqueue(u8),
        Dequeue,
    }
    impl Model for Queue {
        type Call = QueueCall;
        type Response = Option<u8>;
        fn apply(&mut self, call: &QueueCall) -> Option<u8> {
            match call {
                QueueCall::Enqueue(v) => {
                    self.0.push_back(*v);
                    None
                }
                QueueCall::Dequeue => self.0.pop_front(),
            }
        }
        fn fingerprint(&self) -> [u8; 32] {
            let bytes: Vec<u8> = self.0.iter().copied().collect();
            maftia_crypto::hash::hash("maftia lincheck test queue", &[&bytes])
        }
        fn partition_keys(_: &QueueCall) -> Vec<Vec<u8>> {
            Vec::new()
        }
    }

    #[test]
    fn generic_model_without_keys_is_checked_as_one() {
        use QueueCall::*;
        let q = |c, i, e, call, r| Operation::completed(c, i, e, call, r);
        let fifo = vec![
            q(1, 0, 10, Enqueue(1), None),
            q(2, 20, 30, Enqueue(2), None),
            q(3, 40, 50, Dequeue, Some(1)),
            q(3, 60, 70, Dequeue, Some(2)),
        ];
        assert_eq!(check(&Queue::default(), &fifo, 1000), Verdict::Linearizable);
        let mut lifo = fifo.clone();
        lifo[2].response = Some(Some(2));
        lifo[3].response = Some(Some(1));
        assert!(matches!(
            check(&Queue::default(), &lifo, 1000),
            Verdict::NotLinearizable { ref partition_keys, ref operations, .. }
                if partition_keys.is_empty() && operations.len() == 4
        ));
        // Concurrent enqueues may be ordered either way.
        let mut concurrent = lifo;
        concurrent[1].invoke = 5;
        assert_eq!(
            check(&Queue::default(), &concurrent, 1000),
            Verdict::Linearizable
        );
        let report = check_report(&Queue::default(), &concurrent, 1000);
        assert_eq!((report.components, report.largest_component), (1, 4));
    }

    #[test]
    fn budget_exhaustion_and_malformed_histories_are_unknown() {
        let history = vec![
            op(1, 0, 10, put("x", "1"), written(None)),
            op(2, 0, 10, put("x", "2"), written(Some("1"))),
            op(3, 20, 30, get("x"), value(Some("2"))),
        ];
        assert_eq!(check(&KvModel::new(), &history, 100), Verdict::Linearizable);
        assert!(matches!(
            check(&KvModel::new(), &history, 2),
            Verdict::Unknown { ref reason } if reason.contains("budget of 2 steps")
        ));
        let report = check_report(&KvModel::new(), &history, 100);
        assert!(report.steps > 0 && report.steps <= 100);
        let mut backwards = history;
        backwards[1].complete = Some(0);
        backwards[1].invoke = 1;
        assert!(matches!(
            kv_check(&backwards),
            Verdict::Unknown { ref reason } if reason.contains("#1")
        ));
    }

    /// A small deterministic generator for the large histories (splitmix64).
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// What happened to one generated operation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Completed,
        /// The client timed out, but the operation took effect.
        PendingApplied,
        /// The client timed out and the operation never took effect.
        PendingLost,
    }

    #[derive(Debug, Clone)]
    struct PlannedOp {
        client: u64,
        request: KvRequest,
        /// From invocation to the real linearization point.
        before: u64,
        /// From the linearization point to completion.
        after: u64,
        /// From completion to the client's next invocation.
        gap: u64,
        fate: Fate,
    }

    /// Run the plan: each client invokes its operations one after another; each operation takes
    /// effect at its own point inside its interval, and the store applies them in the order of
    /// those points, which produces the responses.
    fn realize(plan: &[PlannedOp]) -> Vec<KvOp> {
        let mut client_free: BTreeMap<u64, u64> = BTreeMap::new();
        let mut points = Vec::with_capacity(plan.len());
        let mut history: Vec<KvOp> = Vec::with_capacity(plan.len());
        for (index, step) in plan.iter().enumerate() {
            let free = client_free.entry(step.client).or_insert(0);
            let invoke = *free;
            let point = invoke + step.before;
            let complete = point + step.after;
            *free = complete + step.gap;
            points.push((point, index));
            history.push(Operation::pending(
                step.client,
                invoke,
                step.request.clone(),
            ));
            if step.fate == Fate::Completed {
                history[index].complete = Some(complete);
            }
        }
        points.sort_unstable();
        let mut store = KvStore::new();
        for (_, index) in points {
            let step = &plan[index];
            if step.fate == Fate::PendingLost {
                continue;
            }
            let reply = store.apply(step.request.clone());
            if step.fate == Fate::Completed {
                history[index].response = Some(reply);
            }
        }
        history
    }

    fn key_strategy(keys: u8) -> impl Strategy<Value = Vec<u8>> + Clone {
        (0..keys).prop_map(|k| vec![b'k', b'0' + k])
    }
    fn value_strategy() -> impl Strategy<Value = Vec<u8>> + Clone {
        (0u8..3).prop_map(|v| vec![b'v', b'0' + v])
    }

    fn request_strategy() -> impl Strategy<Value = KvRequest> {
        let key = key_strategy(5);
        let value = value_strategy();
        let maybe = proptest::option::of(value.clone());
        prop_oneof![
            4 => key.clone().prop_map(|key| KvRequest::Get { key }),
            3 => (key.clone(), value).prop_map(|(key, value)| KvRequest::Put { key, value }),
            1 => key.clone().prop_map(|key| KvRequest::Delete { key }),
            2 => (key.clone(), maybe.clone(), maybe.clone())
                .prop_map(|(key, expected, new)| KvRequest::CompareAndSet { key, expected, new }),
            1 => (key.clone(), proptest::option::of(key.clone()), 1u32..4)
                .prop_map(|(start, end, limit)| KvRequest::Range { start, end, limit }),
            1 => (
                proptest::collection::vec((key.clone(), maybe.clone()), 0..2),
                proptest::collection::vec((key, maybe), 0..3),
            )
                .prop_map(|(preconditions, writes)| KvRequest::Transaction { preconditions, writes }),
        ]
    }

    /// Plans of up to 40 operations; `1 / pending_odds` of them end with an unknown outcome.
    fn plan_strategy(pending_odds: u32) -> impl Strategy<Value = Vec<PlannedOp>> {
        let fate = prop_oneof![
            2 * pending_odds - 2 => Just(Fate::Completed),
            1 => Just(Fate::PendingApplied),
            1 => Just(Fate::PendingLost),
        ];
        proptest::collection::vec(
            (
                0u64..4,
                request_strategy(),
                0u64..25,
                0u64..25,
                0u64..6,
                fate,
            )
                .prop_map(|(client, request, before, after, gap, fate)| PlannedOp {
                    client,
                    request,
                    before,
                    after,
                    gap,
                    fate,
                }),
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn histories_with_real_linearization_points_are_linearizable(plan in plan_strategy(5)) {
            let history = realize(&plan);
            prop_assert_eq!(kv_check(&history), Verdict::Linearizable);
        }

        /// With few unknown outcomes the violation is always found.
        #[test]
        fn a_get_returning_a_never_written_value_is_caught(
            plan in plan_strategy(20),
            pick in any::<proptest::sample::Index>(),
        ) {
            let Some((history, victim)) = corrupt_random_get(&plan, pick) else {
                return Ok(());
            };
            match kv_check(&history) {
                Verdict::NotLinearizable { operations, partition_keys, .. } => {
                    prop_assert!(operations.contains(&victim));
                    let KvRequest::Get { key } = &history[victim].call else { unreachable!() };
                    prop_assert!(partition_keys.contains(key));
                }
                other => prop_assert!(false, "expected NotLinearizable, got {:?}", other),
            }
        }

        /// With many unknown outcomes, proving the violation can take exponential time (every
        /// subset of them may have taken effect at every point); a small budget may then end
        /// in Unknown, but never in Linearizable.
        #[test]
        fn a_never_written_value_is_never_accepted(
            plan in plan_strategy(3),
            pick in any::<proptest::sample::Index>(),
        ) {
            let Some((history, _)) = corrupt_random_get(&plan, pick) else {
                return Ok(());
            };
            let verdict = check(&KvModel::new(), &history, 5_000);
            prop_assert!(!verdict.is_linearizable());
        }
    }

    /// The history of `plan` with one completed `Get` (chosen by `pick`) answering a value no
    /// operation writes; `None` if the history has no completed `Get`.
    fn corrupt_random_get(
        plan: &[PlannedOp],
        pick: proptest::sample::Index,
    ) -> Option<(Vec<KvOp>, usize)> {
        let mut history = realize(plan);
        let gets: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, op)| !op.is_pending() && matches!(op.call, KvRequest::Get { .. }))
            .map(|(index, _)| index)
            .collect();
        if gets.is_empty() {
            return None;
        }
        let victim = gets[pick.index(gets.len())];
        history[victim].response = Some(value(Some("never written")));
        Some((history, victim))
    }

    /// 8 clients × 500 operations over 50 keys, with transactions and ranges joining keys.
    fn big_history(seed: u64, txn: bool, range: bool, pending: bool) -> Vec<KvOp> {
        let mut rng = SplitMix(seed);
        let key = |rng: &mut SplitMix| format!("key{:02}", rng.below(50)).into_bytes();
        let val = |rng: &mut SplitMix| format!("v{}", rng.below(4)).into_bytes();
        let mut plan = Vec::new();
        for round in 0..500 {
            for client in 0..8u64 {
                let request = match rng.below(100) {
                    0..=39 => KvRequest::Get { key: key(&mut rng) },
                    40..=69 => KvRequest::Put {
                        key: key(&mut rng),
                        value: val(&mut rng),
                    },
                    70..=74 => KvRequest::Delete { key: key(&mut rng) },
                    75..=86 => {
                        let k = key(&mut rng);
                        let expected = (rng.below(2) == 0).then(|| val(&mut rng));
                        KvRequest::CompareAndSet {
                            key: k,
                            expected,
                            new: Some(val(&mut rng)),
                        }
                    }
                    87..=94 if txn => KvRequest::Transaction {
                        preconditions: vec![(key(&mut rng), None)],
                        writes: vec![(key(&mut rng), Some(val(&mut rng)))],
                    },
                    95.. if range => {
                        let start = rng.below(48);
                        KvRequest::Range {
                            start: format!("key{start:02}").into_bytes(),
                            end: Some(format!("key{:02}", start + 3).into_bytes()),
                            limit: 10,
                        }
                    }
                    _ => KvRequest::Get { key: key(&mut rng) },
                };
                let fate = if !pending {
                    Fate::Completed
                } else if round % 97 == 13 && client == 3 {
                    Fate::PendingApplied
                } else if round % 89 == 7 && client == 5 {
                    Fate::PendingLost
                } else {
                    Fate::Completed
                };
                plan.push(PlannedOp {
                    client,
                    request,
                    before: rng.below(40),
                    after: rng.below(40),
                    gap: rng.below(10),
                    fate,
                });
            }
        }
        realize(&plan)
    }

    /// Replace the response of the first completed read at or after `from` that saw a value.
    fn corrupt_a_read(history: &mut [KvOp], from: usize) -> usize {
        let victim = (from..history.len())
            .find(|&i| {
                !history[i].is_pending()
                    && matches!(history[i].response, Some(KvReply::Value { value: Some(_) }))
            })
            .expect("the workload reads written keys");
        history[victim].response = Some(value(Some("never written")));
        victim
    }

    fn assert_caught(history: &[KvOp], victim: usize) {
        match check(&KvModel::new(), history, DEFAULT_SEARCH_BUDGET) {
            Verdict::NotLinearizable {
                frontier,
                operations,
                ..
            } => assert!(
                frontier.contains(&victim) && operations.contains(&victim),
                "{frontier:?}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn eight_clients_by_500_operations_over_50_keys_check_quickly() {
        // Single-key operations and some outcomes unknown: one component per key.
        let history = big_history(0x5eed, false, false, true);
        assert_eq!(history.len(), 4000);
        assert!(history.iter().filter(|op| op.is_pending()).count() >= 8);
        let report = check_report(&KvModel::new(), &history, DEFAULT_SEARCH_BUDGET);
        assert_eq!(report.verdict, Verdict::Linearizable, "{report:?}");
        assert_eq!(report.components, 50);
        // Near one step per operation: the search hardly backtracks.
        assert!(report.steps < 3 * history.len(), "{report:?}");
        let mut broken = history;
        let victim = corrupt_a_read(&mut broken, 2000);
        assert_caught(&broken, victim);

        // Transactions and range scans join every key into one component of 4000 operations;
        // with unknown outcomes too, the pending-operation pruning keeps the search near linear.
        let history = big_history(0x5eed, true, true, true);
        let report = check_report(&KvModel::new(), &history, DEFAULT_SEARCH_BUDGET);
        assert_eq!(report.verdict, Verdict::Linearizable, "{report:?}");
        assert_eq!((report.components, report.largest_component), (1, 4000));
        assert!(report.steps < DEFAULT_SEARCH_BUDGET / 20, "{report:?}");
        // Proving a violation means exhausting every linearization of the operations before it,
        // so in one giant component a violation is found quickly only early in the history (a
        // late one may end as Unknown — never as Linearizable).
        let mut broken = history;
        let victim = corrupt_a_read(&mut broken, 150);
        assert_caught(&broken, victim);
    }
}
