//! The network's in-flight frames, ordered by age, with O(log k) access by rank.
//!
//! The scheduler wants three kinds of pick — uniformly random, the newest, the oldest — among
//! the *deliverable* frames (those not held back by a partition), and a run may have thousands
//! in flight (floods). A plain vector costs O(k) per removal; here frames sit in slots indexed
//! by their sequence number and a Fenwick tree counts the deliverable ones, so "the r-th
//! deliverable frame in age order" is a O(log k) descent.

/// Slots indexed by `seq - base`; a Fenwick tree over "slot holds a deliverable item".
pub(crate) struct AgeQueue<T> {
    /// Sequence number of `slots[0]`.
    base: u64,
    slots: Vec<Option<Entry<T>>>,
    /// 1-based Fenwick tree over the deliverable flags of `slots`; `tree.len() == capacity + 1`.
    tree: Vec<u32>,
    deliverable: usize,
    held: usize,
    /// Slots known to be empty at the front (slots are never refilled, so this only grows
    /// until a compaction).
    dead_prefix: usize,
}

struct Entry<T> {
    item: T,
    deliverable: bool,
}

impl<T> AgeQueue<T> {
    pub(crate) fn new() -> Self {
        AgeQueue {
            base: 0,
            slots: Vec::new(),
            tree: vec![0; 65],
            deliverable: 0,
            held: 0,
            dead_prefix: 0,
        }
    }

    /// Frames that can be picked now.
    pub(crate) fn deliverable(&self) -> usize {
        self.deliverable
    }

    /// Frames held back (not deliverable until released).
    pub(crate) fn held(&self) -> usize {
        self.held
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.deliverable == 0 && self.held == 0
    }

    /// Add the item with sequence number `seq`, which must be above every earlier one.
    pub(crate) fn push(&mut self, seq: u64, item: T, deliverable: bool) {
        debug_assert!(
            seq >= self.base + self.slots.len() as u64,
            "sequence numbers increase"
        );
        if self.slots.is_empty() {
            self.base = seq;
        }
        while self.base + (self.slots.len() as u64) < seq {
            self.slots.push(None);
        }
        self.slots.push(Some(Entry { item, deliverable }));
        let index = self.slots.len() - 1;
        if index + 1 >= self.tree.len() {
            self.rebuild();
        } else if deliverable {
            self.add(index, 1);
        }
        if deliverable {
            self.deliverable += 1;
        } else {
            self.held += 1;
        }
    }

    /// Remove and return the `rank`-th deliverable item in age order (0 = oldest).
    pub(crate) fn take_by_rank(&mut self, rank: usize) -> Option<T> {
        if rank >= self.deliverable {
            return None;
        }
        let index = self.find(rank);
        let entry = self.slots.get_mut(index)?.take()?;
        self.add(index, -1);
        self.deliverable -= 1;
        self.compact_front();
        Some(entry.item)
    }

    /// Mark every deliverable item for which `hold` is true as held (O(k log k)).
    pub(crate) fn hold_where(&mut self, mut hold: impl FnMut(&T) -> bool) {
        let mut newly_held = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(entry) = slot {
                if entry.deliverable && hold(&entry.item) {
                    entry.deliverable = false;
                    newly_held.push(index);
                }
            }
        }
        self.deliverable -= newly_held.len();
        self.held += newly_held.len();
        for index in newly_held {
            self.add(index, -1);
        }
    }

    /// Make every held item deliverable again (O(k log k)).
    pub(crate) fn release_all(&mut self) {
        if self.held == 0 {
            return;
        }
        let mut released = Vec::with_capacity(self.held);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(entry) = slot {
                if !entry.deliverable {
                    entry.deliverable = true;
                    released.push(index);
                }
            }
        }
        self.deliverable += self.held;
        self.held = 0;
        for index in released {
            self.add(index, 1);
        }
    }

    /// Drop empty slots at the front once they make up half the slots (amortized O(1)).
    fn compact_front(&mut self) {
        if self.deliverable + self.held == 0 {
            // Every flag is zero, so the tree is all zeros and stays valid for any base.
            self.slots.clear();
            self.dead_prefix = 0;
            return;
        }
        while self
            .slots
            .get(self.dead_prefix)
            .is_some_and(Option::is_none)
        {
            self.dead_prefix += 1;
        }
        if self.slots.len() < 64 || self.dead_prefix * 2 < self.slots.len() {
            return;
        }
        self.slots.drain(..self.dead_prefix);
        self.base += self.dead_prefix as u64;
        self.dead_prefix = 0;
        self.rebuild();
    }

    /// Rebuild the tree (O(capacity)) with room for at least twice the slots.
    fn rebuild(&mut self) {
        let capacity = (2 * self.slots.len()).max(64);
        self.tree.clear();
        self.tree.resize(capacity + 1, 0);
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.as_ref().is_some_and(|e| e.deliverable) {
                self.tree[index + 1] += 1;
            }
        }
        for i in 1..=capacity {
            let parent = i + (i & i.wrapping_neg());
            if parent <= capacity {
                self.tree[parent] += self.tree[i];
            }
        }
    }

    fn add(&mut self, index: usize, delta: i32) {
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] = self.tree[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Slot index of the `rank`-th deliverable item (`rank < deliverable`).
    fn find(&self, rank: usize) -> usize {
        let capacity = self.tree.len() - 1;
        let mut position = 0;
        let mut remaining = rank as u32 + 1;
        let mut step = capacity.next_power_of_two();
        while step > 0 {
            let next = position + step;
            if next <= capacity && self.tree[next] < remaining {
                position = next;
                remaining -= self.tree[next];
            }
            step /= 2;
        }
        // `position` is the largest prefix with fewer than rank + 1 items; the item is next.
        position
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The queue against a sorted vector, under random operations.
    #[test]
    fn matches_a_sorted_vector() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let mut queue = AgeQueue::new();
            let mut model: Vec<(u64, bool)> = Vec::new(); // (seq, deliverable)
            let mut seq = rng.gen_range(0..5u64);
            for _ in 0..2000 {
                match rng.gen_range(0..10) {
                    0..=4 => {
                        let deliverable = rng.gen_bool(0.9);
                        queue.push(seq, seq, deliverable);
                        model.push((seq, deliverable));
                        seq += rng.gen_range(1..4);
                    }
                    5..=7 => {
                        let live: Vec<u64> =
                            model.iter().filter(|(_, d)| *d).map(|(s, _)| *s).collect();
                        let rank = rng.gen_range(0..live.len() + 1);
                        let got = queue.take_by_rank(rank);
                        assert_eq!(got, live.get(rank).copied());
                        if let Some(s) = got {
                            model.retain(|(m, _)| *m != s);
                        }
                    }
                    8 => {
                        let modulus = rng.gen_range(2..5);
                        queue.hold_where(|s| s % modulus == 0);
                        for (s, d) in &mut model {
                            if *s % modulus == 0 {
                                *d = false;
                            }
                        }
                    }
                    _ => {
                        queue.release_all();
                        model.iter_mut().for_each(|(_, d)| *d = true);
                    }
                }
                let deliverable = model.iter().filter(|(_, d)| *d).count();
                assert_eq!(queue.deliverable(), deliverable);
                assert_eq!(queue.held(), model.len() - deliverable);
                assert_eq!(queue.is_empty(), model.is_empty());
            }
        }
    }
}
