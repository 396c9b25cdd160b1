//! The sans-IO protocol interface.
//!
//! A protocol instance is a deterministic state machine. The runtime (the simulator or the
//! node) calls [`Protocol::handle_input`] for local requests and [`Protocol::handle_message`]
//! for every message that arrives, and executes the returned [`Step`]:
//!
//! 1. send every [`TargetedMessage`] — [`Target::All`] includes the sending node itself, and the
//!    runtime delivers that copy locally (so a protocol counts its own echo like anyone else's);
//! 2. hand the outputs to the layer above, in order;
//! 3. record the [`Fault`]s as evidence against their culprit.
//!
//! Rules every implementation keeps (see DESIGN.md, core rules 1 and 3):
//! - no clock, socket, thread or global randomness: randomness is the `rng` argument;
//! - `handle_message` never fails and never panics on what a peer sent: a malformed or
//!   unjustified message is dropped and reported as a [`Fault`] naming the sender;
//! - `Err` from `handle_input` means local misuse (e.g. a second proposal), never a remote fault;
//! - state kept per peer is bounded, whatever the peer sends.
use crate::NodeId;
use rand_core::RngCore;
use std::collections::BTreeSet;
use std::fmt::Debug;

/// Who a message is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every member of the group, the sender included (its own copy is delivered locally).
    All,
    /// Every member except the sender.
    Others,
    /// One node (possibly the sender itself).
    Node(NodeId),
    /// A subset of the members.
    Nodes(BTreeSet<NodeId>),
}

impl Target {
    /// Whether `to` is addressed when `from` sends to this target.
    pub fn contains(&self, from: NodeId, to: NodeId) -> bool {
        match self {
            Target::All => true,
            Target::Others => from != to,
            Target::Node(id) => *id == to,
            Target::Nodes(ids) => ids.contains(&to),
        }
    }

    /// The addressed members of a group of `n`, in id order.
    pub fn recipients(&self, from: NodeId, n: usize) -> impl Iterator<Item = NodeId> + '_ {
        NodeId::all(n).filter(move |to| self.contains(from, *to))
    }
}

/// A message and who it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetedMessage<M> {
    pub target: Target,
    pub message: M,
}

impl<M> TargetedMessage<M> {
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> TargetedMessage<N> {
        TargetedMessage {
            target: self.target,
            message: f(self.message),
        }
    }
}

/// Evidence that `culprit` misbehaved: the protocol-specific `kind` says how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault<K> {
    pub culprit: NodeId,
    pub kind: K,
}

impl<K> Fault<K> {
    pub fn new(culprit: NodeId, kind: K) -> Self {
        Fault { culprit, kind }
    }
    pub fn map<L>(self, f: impl FnOnce(K) -> L) -> Fault<L> {
        Fault {
            culprit: self.culprit,
            kind: f(self.kind),
        }
    }
}

/// What one call into a protocol produced. Must be executed by the caller.
#[must_use = "a Step carries messages to send, outputs and evidence; dropping it loses them"]
#[derive(Debug)]
pub struct Step<M, O, K> {
    pub messages: Vec<TargetedMessage<M>>,
    pub outputs: Vec<O>,
    pub faults: Vec<Fault<K>>,
}

impl<M, O, K> Default for Step<M, O, K> {
    fn default() -> Self {
        Step {
            messages: Vec::new(),
            outputs: Vec::new(),
            faults: Vec::new(),
        }
    }
}

impl<M, O, K> Step<M, O, K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn send(&mut self, target: Target, message: M) {
        self.messages.push(TargetedMessage { target, message });
    }

    pub fn output(&mut self, output: O) {
        self.outputs.push(output);
    }

    pub fn fault(&mut self, culprit: NodeId, kind: K) {
        self.faults.push(Fault::new(culprit, kind));
    }

    /// Append another step of the same protocol.
    pub fn extend(&mut self, other: Self) {
        self.messages.extend(other.messages);
        self.outputs.extend(other.outputs);
        self.faults.extend(other.faults);
    }

    /// Fold a child protocol's step into this one: its messages are wrapped with `wrap`, its
    /// faults with `wrap_fault`; its outputs are returned for the parent to act on.
    pub fn extend_with<CM, CO, CK>(
        &mut self,
        child: Step<CM, CO, CK>,
        wrap: impl Fn(CM) -> M,
        wrap_fault: impl Fn(CK) -> K,
    ) -> Vec<CO> {
        self.messages
            .extend(child.messages.into_iter().map(|m| m.map(&wrap)));
        self.faults
            .extend(child.faults.into_iter().map(|f| f.map(&wrap_fault)));
        child.outputs
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.outputs.is_empty() && self.faults.is_empty()
    }
}

/// A sans-IO protocol instance run by one node.
pub trait Protocol {
    /// What nodes send each other. Serialized with [`crate::codec`].
    type Message: Clone + Debug + serde::Serialize + serde::de::DeserializeOwned;
    /// A local request (e.g. "broadcast this payload").
    type Input;
    /// What the protocol delivers to the layer above.
    type Output: Clone + Debug + PartialEq;
    /// How a peer can misbehave in this protocol.
    type FaultKind: Clone + Debug + PartialEq;
    /// Local misuse of `handle_input`.
    type Error: std::error::Error;

    /// This node's id.
    fn our_id(&self) -> NodeId;

    /// Handle a local input.
    fn handle_input(
        &mut self,
        input: Self::Input,
        rng: &mut dyn RngCore,
    ) -> Result<ProtocolStep<Self>, Self::Error>;

    /// Handle a message from `from`. Never fails: misbehaviour becomes a [`Fault`].
    fn handle_message(
        &mut self,
        from: NodeId,
        message: Self::Message,
        rng: &mut dyn RngCore,
    ) -> ProtocolStep<Self>;

    /// `true` once this instance will neither output nor need to send anything more.
    fn terminated(&self) -> bool;
}

/// The step type of protocol `P`.
pub type ProtocolStep<P> =
    Step<<P as Protocol>::Message, <P as Protocol>::Output, <P as Protocol>::FaultKind>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let me = NodeId(1);
        assert_eq!(Target::All.recipients(me, 3).count(), 3);
        assert_eq!(
            Target::Others.recipients(me, 3).collect::<Vec<_>>(),
            vec![NodeId(0), NodeId(2)]
        );
        assert!(Target::Node(NodeId(2)).contains(me, NodeId(2)));
        let subset = Target::Nodes([NodeId(0), NodeId(5)].into_iter().collect());
        assert_eq!(
            subset.recipients(me, 3).collect::<Vec<_>>(),
            vec![NodeId(0)]
        );
    }

    #[test]
    fn extend_with_wraps_child_messages_and_faults() {
        let mut child: Step<u8, &str, u8> = Step::new();
        child.send(Target::All, 7);
        child.output("done");
        child.fault(NodeId(3), 9);
        let mut parent: Step<(u32, u8), (), String> = Step::new();
        let outputs = parent.extend_with(child, |m| (42, m), |k| format!("child:{k}"));
        assert_eq!(outputs, vec!["done"]);
        assert_eq!(parent.messages[0].message, (42, 7));
        assert_eq!(
            parent.faults[0],
            Fault::new(NodeId(3), "child:9".to_string())
        );
    }
}
