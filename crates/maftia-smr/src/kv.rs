//! The replicated key-value service: a [`StateMachine`] over an ordered map of byte strings.
//!
//! Guarantees: given the same ordered request sequence, every correct replica returns the same
//! reply bytes and reaches the same state and digest (execution is a pure function of the state
//! and the request; the map is a `BTreeMap`, no clocks, randomness or floats). Reads go through
//! the order like writes, so a client combining f+1 matching replies sees a linearizable
//! history (issue 6; no faster read mode exists yet). Every request is checked against the
//! documented limits *before* anything is applied, so an error reply means nothing changed, and
//! a [`KvRequest::Transaction`] is all-or-nothing.
//!
//! Assumptions: requests arrive already ordered and authenticated (replication manager); this
//! module trusts nothing about their contents.
//!
//! Complexity: `Get`/`Put`/`Delete`/`CompareAndSet` cost O(log N + key + value) for N keys;
//! `Range` O(log N + returned bytes); a transaction O(ops · log N). [`KvStore::snapshot`] and
//! [`KvStore::digest`] are O(total state size); [`KvStore::restore`] is O(snapshot size) and
//! never allocates beyond the snapshot's length.
//!
//! Wire format: requests and replies use `maftia_core::codec` (versioned postcard envelope),
//! decoded with the [`MAX_REQUEST_SIZE`] limit. The snapshot is a fixed hand-written canonical
//! encoding (see [`KvStore::snapshot`]) so that it is infallible and independent of serde.
use std::collections::BTreeMap;
use std::ops::Bound;

use maftia_core::codec::{self, DecodeError, EncodeError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::StateMachine;

/// Longest key accepted, in bytes.
pub const MAX_KEY_SIZE: usize = 1024;
/// Longest value accepted (in a put, compare-and-set, transaction write or precondition), in bytes.
pub const MAX_VALUE_SIZE: usize = 64 * 1024;
/// Largest `limit` a [`KvRequest::Range`] may ask for.
pub const MAX_RANGE_LIMIT: u32 = 1000;
/// Key and value bytes a range reply carries at most (it always carries at least one entry if
/// one is in range); the rest is reported through `resume_from`.
pub const MAX_RANGE_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Most preconditions plus writes in one [`KvRequest::Transaction`].
pub const MAX_TXN_OPS: usize = 64;
/// Largest encoded request accepted (a full transaction of maximal keys and values fits).
pub const MAX_REQUEST_SIZE: usize = 5 * 1024 * 1024;

/// Domain of [`KvStore::digest`].
const DIGEST_CONTEXT: &str = "maftia 2026-11 smr kv state digest";
/// First bytes of a snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"MFKV";
/// Version of the snapshot encoding.
pub const SNAPSHOT_VERSION: u8 = 1;

/// A request to the key-value service. Absent values (`None`) mean "no such key".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Read one key. Reply: [`KvReply::Value`].
    Get { key: Vec<u8> },
    /// Write one key. Reply: [`KvReply::Written`] with the previous value.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove one key. Reply: [`KvReply::Written`] with the previous value.
    Delete { key: Vec<u8> },
    /// If the key's current value equals `expected`, set it to `new` (`None` deletes).
    /// Reply: [`KvReply::CompareAndSet`].
    CompareAndSet {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    /// Entries with `start <= key < end` (no upper bound if `end` is `None`) in key order, at
    /// most `limit` (1..=[`MAX_RANGE_LIMIT`]) of them. Reply: [`KvReply::Range`].
    Range {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    },
    /// If every precondition `(key, value)` holds (the key's current value equals `value`,
    /// `None` meaning absent), apply every write in order (`None` deletes; a later write to the
    /// same key wins); otherwise change nothing. Reply: [`KvReply::Committed`] or
    /// [`KvReply::Aborted`].
    Transaction {
        preconditions: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
}

/// The reply to a [`KvRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// The value of the key read by `Get`.
    Value { value: Option<Vec<u8>> },
    /// A `Put` or `Delete` was applied; the key's value before it.
    Written { previous: Option<Vec<u8>> },
    /// Whether the compare-and-set swapped, and the value it found (before the swap).
    CompareAndSet {
        swapped: bool,
        found: Option<Vec<u8>>,
    },
    /// Entries in key order; `resume_from` is the first key in range not returned (cut by
    /// `limit` or [`MAX_RANGE_REPLY_BYTES`]), `None` if the range is exhausted.
    Range {
        entries: Vec<(Vec<u8>, Vec<u8>)>,
        resume_from: Option<Vec<u8>>,
    },
    /// The transaction's writes were all applied.
    Committed,
    /// The transaction changed nothing: the indices of the preconditions that failed.
    Aborted { failed_preconditions: Vec<u32> },
    /// The request was rejected and changed nothing.
    Error(KvError),
}

/// Why a request was rejected (carried in [`KvReply::Error`]; deterministic for a given request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum KvError {
    #[error("malformed request: {reason}")]
    Malformed { reason: String },
    #[error("key of {size} bytes exceeds the limit of {max}")]
    KeyTooLarge { size: u64, max: u64 },
    #[error("value of {size} bytes exceeds the limit of {max}")]
    ValueTooLarge { size: u64, max: u64 },
    #[error("range limit {limit} is outside 1..={max}")]
    RangeLimitOutOfBounds { limit: u32, max: u32 },
    #[error("transaction of {ops} operations exceeds the limit of {max}")]
    TooManyTransactionOps { ops: u64, max: u64 },
}

/// Why [`KvStore::restore`] rejected a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    #[error("snapshot ended early")]
    Truncated,
    #[error("snapshot does not start with the key-value magic bytes")]
    BadMagic,
    #[error("unsupported snapshot version {found} (this build reads {SNAPSHOT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("entry {index}: key of {size} bytes exceeds the limit of {MAX_KEY_SIZE}")]
    KeyTooLarge { index: u64, size: u64 },
    #[error("entry {index}: value of {size} bytes exceeds the limit of {MAX_VALUE_SIZE}")]
    ValueTooLarge { index: u64, size: u64 },
    #[error("entry {index}: key not strictly greater than the previous key")]
    KeysNotStrictlyIncreasing { index: u64 },
    #[error("{extra} bytes left over after the last entry")]
    TrailingBytes { extra: usize },
}

/// Encode a request for [`StateMachine::execute`] (client side).
pub fn encode_request(request: &KvRequest) -> Result<Vec<u8>, EncodeError> {
    codec::encode_with_limit(request, MAX_REQUEST_SIZE)
}

/// Decode the reply bytes returned by [`StateMachine::execute`] (client side).
pub fn decode_reply(reply: &[u8]) -> Result<KvReply, DecodeError> {
    codec::decode(reply)
}

/// The key-value state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.len() > MAX_KEY_SIZE {
        return Err(KvError::KeyTooLarge {
            size: key.len() as u64,
            max: MAX_KEY_SIZE as u64,
        });
    }
    Ok(())
}

fn check_value(value: Option<&Vec<u8>>) -> Result<(), KvError> {
    match value {
        Some(v) if v.len() > MAX_VALUE_SIZE => Err(KvError::ValueTooLarge {
            size: v.len() as u64,
            max: MAX_VALUE_SIZE as u64,
        }),
        _ => Ok(()),
    }
}

/// Check every limit of `request` before anything is applied.
fn validate(request: &KvRequest) -> Result<(), KvError> {
    match request {
        KvRequest::Get { key } | KvRequest::Delete { key } => check_key(key),
        KvRequest::Put { key, value } => {
            check_key(key)?;
            check_value(Some(value))
        }
        KvRequest::CompareAndSet { key, expected, new } => {
            check_key(key)?;
            check_value(expected.as_ref())?;
            check_value(new.as_ref())
        }
        KvRequest::Range { start, end, limit } => {
            check_key(start)?;
            if let Some(end) = end {
                check_key(end)?;
            }
            if *limit == 0 || *limit > MAX_RANGE_LIMIT {
                return Err(KvError::RangeLimitOutOfBounds {
                    limit: *limit,
                    max: MAX_RANGE_LIMIT,
                });
            }
            Ok(())
        }
        KvRequest::Transaction {
            preconditions,
            writes,
        } => {
            let ops = preconditions.len().saturating_add(writes.len());
            if ops > MAX_TXN_OPS {
                return Err(KvError::TooManyTransactionOps {
                    ops: ops as u64,
                    max: MAX_TXN_OPS as u64,
                });
            }
            for (key, value) in preconditions.iter().chain(writes) {
                check_key(key)?;
                check_value(value.as_ref())?;
            }
            Ok(())
        }
    }
}

fn read_u32(input: &mut &[u8]) -> Result<u32, SnapshotError> {
    let (head, rest) = input
        .split_first_chunk::<4>()
        .ok_or(SnapshotError::Truncated)?;
    *input = rest;
    Ok(u32::from_le_bytes(*head))
}

fn read_bytes<'a>(input: &mut &'a [u8], len: usize) -> Result<&'a [u8], SnapshotError> {
    if input.len() < len {
        return Err(SnapshotError::Truncated);
    }
    let (head, rest) = input.split_at(len);
    *input = rest;
    Ok(head)
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value stored under `key` (a local read, outside the order).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Execute a typed request: validate every limit, then apply. An error reply changed nothing.
    pub fn apply(&mut self, request: KvRequest) -> KvReply {
        if let Err(error) = validate(&request) {
            return KvReply::Error(error);
        }
        match request {
            KvRequest::Get { key } => KvReply::Value {
                value: self.entries.get(&key).cloned(),
            },
            KvRequest::Put { key, value } => KvReply::Written {
                previous: self.entries.insert(key, value),
            },
            KvRequest::Delete { key } => KvReply::Written {
                previous: self.entries.remove(&key),
            },
            KvRequest::CompareAndSet { key, expected, new } => {
                let found = self.entries.get(&key).cloned();
                let swapped = found == expected;
                if swapped {
                    self.write(key, new);
                }
                KvReply::CompareAndSet { swapped, found }
            }
            KvRequest::Range { start, end, limit } => self.range(start, end, limit),
            KvRequest::Transaction {
                preconditions,
                writes,
            } => {
                let failed_preconditions: Vec<u32> = preconditions
                    .iter()
                    .zip(0u32..)
                    .filter(|((key, value), _)| self.entries.get(key) != value.as_ref())
                    .map(|(_, index)| index)
                    .collect();
                if !failed_preconditions.is_empty() {
                    return KvReply::Aborted {
                        failed_preconditions,
                    };
                }
                for (key, value) in writes {
                    self.write(key, value);
                }
                KvReply::Committed
            }
        }
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match value {
            Some(value) => {
                self.entries.insert(key, value);
            }
            None => {
                self.entries.remove(&key);
            }
        }
    }

    fn range(&self, start: Vec<u8>, end: Option<Vec<u8>>, limit: u32) -> KvReply {
        // `BTreeMap::range` panics when start > end, so an empty or inverted range is answered
        // before calling it.
        let upper = match &end {
            Some(end) if *end <= start => {
                return KvReply::Range {
                    entries: Vec::new(),
                    resume_from: None,
                }
            }
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        let mut in_range = self
            .entries
            .range::<[u8], _>((Bound::Included(start.as_slice()), upper));
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut resume_from = None;
        for (key, value) in in_range.by_ref() {
            let size = key.len().saturating_add(value.len());
            let over_budget =
                !entries.is_empty() && bytes.saturating_add(size) > MAX_RANGE_REPLY_BYTES;
            if entries.len() >= limit as usize || over_budget {
                resume_from = Some(key.clone());
                break;
            }
            bytes = bytes.saturating_add(size);
            entries.push((key.clone(), value.clone()));
        }
        KvReply::Range {
            entries,
            resume_from,
        }
    }

    /// Decode a snapshot without touching `self`: checks magic, version, every length against
    /// the limits, strictly increasing keys and the absence of trailing bytes.
    fn parse_snapshot(snapshot: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, SnapshotError> {
        let mut input = snapshot;
        let magic = read_bytes(&mut input, SNAPSHOT_MAGIC.len())?;
        if magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = read_bytes(&mut input, 1)?;
        if version != [SNAPSHOT_VERSION] {
            return Err(SnapshotError::UnsupportedVersion {
                found: version.first().copied().unwrap_or_default(),
            });
        }
        let count = input
            .split_first_chunk::<8>()
            .map(|(head, rest)| {
                input = rest;
                u64::from_le_bytes(*head)
            })
            .ok_or(SnapshotError::Truncated)?;
        let mut entries = BTreeMap::new();
        let mut previous: Option<&[u8]> = None;
        // The loop consumes at least 8 bytes per entry, so a huge `count` runs out of input (and
        // memory use is bounded by the snapshot's length) long before it matters.
        for index in 0..count {
            let key_len = read_u32(&mut input)? as usize;
            if key_len > MAX_KEY_SIZE {
                return Err(SnapshotError::KeyTooLarge {
                    index,
                    size: key_len as u64,
                });
            }
            let key = read_bytes(&mut input, key_len)?;
            let value_len = read_u32(&mut input)? as usize;
            if value_len > MAX_VALUE_SIZE {
                return Err(SnapshotError::ValueTooLarge {
                    index,
                    size: value_len as u64,
                });
            }
            let value = read_bytes(&mut input, value_len)?;
            if previous.is_some_and(|previous| previous >= key) {
                return Err(SnapshotError::KeysNotStrictlyIncreasing { index });
            }
            previous = Some(key);
            entries.insert(key.to_vec(), value.to_vec());
        }
        if !input.is_empty() {
            return Err(SnapshotError::TrailingBytes { extra: input.len() });
        }
        Ok(entries)
    }
}

impl StateMachine for KvStore {
    type Error = SnapshotError;

    /// Decode (size-limited) and execute one request. Malformed bytes give
    /// a [`KvReply::Error`] carrying [`KvError::Malformed`]. The reply always encodes: the limits keep
    /// every reply far below `codec::MAX_MESSAGE_SIZE`; should encoding ever fail anyway the
    /// reply is empty bytes, which no client decodes as a valid reply.
    fn execute(&mut self, request: &[u8]) -> Vec<u8> {
        let reply = match codec::decode_with_limit::<KvRequest>(request, MAX_REQUEST_SIZE) {
            Ok(request) => self.apply(request),
            Err(error) => KvReply::Error(KvError::Malformed {
                reason: error.to_string(),
            }),
        };
        codec::encode(&reply).unwrap_or_default()
    }

    /// Canonical encoding: `SNAPSHOT_MAGIC ‖ SNAPSHOT_VERSION ‖ count (u64 LE) ‖` then, in
    /// strictly increasing key order, `key_len (u32 LE) ‖ key ‖ value_len (u32 LE) ‖ value`.
    fn snapshot(&self) -> Vec<u8> {
        let size = self
            .entries
            .iter()
            .fold(SNAPSHOT_MAGIC.len() + 1 + 8, |acc, (k, v)| {
                acc.saturating_add(8 + k.len() + v.len())
            });
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (key, value) in &self.entries {
            // Lengths fit in u32: keys and values are bounded by MAX_KEY_SIZE / MAX_VALUE_SIZE
            // at every entry point (apply and restore).
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.entries = Self::parse_snapshot(snapshot)?;
        Ok(())
    }

    fn digest(&self) -> [u8; 32] {
        maftia_crypto::hash::hash(DIGEST_CONTEXT, &[&self.snapshot()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn put(store: &mut KvStore, key: &str, value: &str) {
        let reply = store.apply(KvRequest::Put {
            key: k(key),
            value: k(value),
        });
        assert!(matches!(reply, KvReply::Written { .. }), "{reply:?}");
    }

    /// Executes through the byte interface and decodes the reply.
    fn exec(store: &mut KvStore, request: KvRequest) -> KvReply {
        let reply = store.execute(&encode_request(&request).unwrap());
        decode_reply(&reply).unwrap()
    }

    #[test]
    fn get_put_delete() {
        let mut s = KvStore::new();
        assert_eq!(
            exec(&mut s, KvRequest::Get { key: k("a") }),
            KvReply::Value { value: None }
        );
        assert_eq!(
            exec(
                &mut s,
                KvRequest::Put {
                    key: k("a"),
                    value: k("1")
                }
            ),
            KvReply::Written { previous: None }
        );
        assert_eq!(
            exec(
                &mut s,
                KvRequest::Put {
                    key: k("a"),
                    value: k("2")
                }
            ),
            KvReply::Written {
                previous: Some(k("1"))
            }
        );
        assert_eq!(
            exec(&mut s, KvRequest::Get { key: k("a") }),
            KvReply::Value {
                value: Some(k("2"))
            }
        );
        assert_eq!(
            exec(&mut s, KvRequest::Delete { key: k("a") }),
            KvReply::Written {
                previous: Some(k("2"))
            }
        );
        assert_eq!(
            exec(&mut s, KvRequest::Delete { key: k("a") }),
            KvReply::Written { previous: None }
        );
        assert!(s.is_empty());
    }

    #[test]
    fn compare_and_set() {
        let mut s = KvStore::new();
        let cas = |expected: Option<&str>, new: Option<&str>| KvRequest::CompareAndSet {
            key: k("c"),
            expected: expected.map(k),
            new: new.map(k),
        };
        // Create only if absent.
        assert_eq!(
            s.apply(cas(None, Some("1"))),
            KvReply::CompareAndSet {
                swapped: true,
                found: None
            }
        );
        assert_eq!(
            s.apply(cas(None, Some("x"))),
            KvReply::CompareAndSet {
                swapped: false,
                found: Some(k("1"))
            }
        );
        assert_eq!(
            s.apply(cas(Some("0"), Some("x"))),
            KvReply::CompareAndSet {
                swapped: false,
                found: Some(k("1"))
            }
        );
        assert_eq!(s.get(b"c"), Some(&b"1"[..]));
        assert_eq!(
            s.apply(cas(Some("1"), Some("2"))),
            KvReply::CompareAndSet {
                swapped: true,
                found: Some(k("1"))
            }
        );
        // Delete on match.
        assert_eq!(
            s.apply(cas(Some("2"), None)),
            KvReply::CompareAndSet {
                swapped: true,
                found: Some(k("2"))
            }
        );
        assert_eq!(s.get(b"c"), None);
    }

    #[test]
    fn range_bounds_limit_and_resume() {
        let mut s = KvStore::new();
        for key in ["a", "b", "c", "d", "e"] {
            put(&mut s, key, key);
        }
        let range = |start: &str, end: Option<&str>, limit| KvRequest::Range {
            start: k(start),
            end: end.map(k),
            limit,
        };
        let pairs = |keys: &[&str]| keys.iter().map(|x| (k(x), k(x))).collect::<Vec<_>>();
        assert_eq!(
            s.apply(range("b", Some("d"), 10)),
            KvReply::Range {
                entries: pairs(&["b", "c"]),
                resume_from: None
            }
        );
        assert_eq!(
            s.apply(range("b", None, 2)),
            KvReply::Range {
                entries: pairs(&["b", "c"]),
                resume_from: Some(k("d"))
            }
        );
        assert_eq!(
            s.apply(range("d", None, 2)),
            KvReply::Range {
                entries: pairs(&["d", "e"]),
                resume_from: None
            }
        );
        // Empty and inverted ranges answer empty instead of panicking in BTreeMap::range.
        for (start, end) in [("c", "c"), ("d", "b")] {
            assert_eq!(
                s.apply(range(start, Some(end), 10)),
                KvReply::Range {
                    entries: vec![],
                    resume_from: None
                }
            );
        }
    }

    #[test]
    fn range_reply_byte_budget() {
        let mut s = KvStore::new();
        let per_entry = 1 + MAX_VALUE_SIZE;
        let fit = MAX_RANGE_REPLY_BYTES / per_entry;
        for i in 0..(fit + 3) as u16 {
            s.apply(KvRequest::Put {
                key: i.to_be_bytes().to_vec(),
                value: vec![7; MAX_VALUE_SIZE - 1],
            });
        }
        let reply = exec(
            &mut s,
            KvRequest::Range {
                start: vec![],
                end: None,
                limit: MAX_RANGE_LIMIT,
            },
        );
        let KvReply::Range {
            entries,
            resume_from,
        } = reply
        else {
            panic!("not a range reply: {reply:?}");
        };
        let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= MAX_RANGE_REPLY_BYTES);
        assert!(entries.len() < fit + 3);
        assert_eq!(
            resume_from,
            Some((entries.len() as u16).to_be_bytes().to_vec())
        );
    }

    #[test]
    fn transaction_commits_all_or_nothing() {
        let mut s = KvStore::new();
        put(&mut s, "x", "1");
        let ok = KvRequest::Transaction {
            preconditions: vec![(k("x"), Some(k("1"))), (k("y"), None)],
            writes: vec![
                (k("x"), None),
                (k("y"), Some(k("a"))),
                (k("y"), Some(k("b"))),
            ],
        };
        assert_eq!(s.apply(ok), KvReply::Committed);
        assert_eq!(s.get(b"x"), None);
        assert_eq!(
            s.get(b"y"),
            Some(&b"b"[..]),
            "the later write to a key wins"
        );

        let before = s.clone();
        let failing = KvRequest::Transaction {
            preconditions: vec![
                (k("y"), Some(k("b"))),
                (k("x"), Some(k("1"))),
                (k("z"), Some(k("q"))),
            ],
            writes: vec![(k("y"), None), (k("w"), Some(k("w")))],
        };
        assert_eq!(
            s.apply(failing),
            KvReply::Aborted {
                failed_preconditions: vec![1, 2]
            }
        );
        assert_eq!(s, before);
    }

    fn assert_rejected(request: KvRequest, expected: KvError) {
        let mut s = KvStore::new();
        put(&mut s, "keep", "me");
        let before = s.clone();
        let digest = s.digest();
        assert_eq!(exec(&mut s, request), KvReply::Error(expected));
        assert_eq!(s, before);
        assert_eq!(s.digest(), digest);
    }

    #[test]
    fn limits_give_error_replies_and_change_nothing() {
        let big_key = vec![0; MAX_KEY_SIZE + 1];
        let big_value = vec![0; MAX_VALUE_SIZE + 1];
        let key_err = KvError::KeyTooLarge {
            size: (MAX_KEY_SIZE + 1) as u64,
            max: MAX_KEY_SIZE as u64,
        };
        let value_err = KvError::ValueTooLarge {
            size: (MAX_VALUE_SIZE + 1) as u64,
            max: MAX_VALUE_SIZE as u64,
        };
        assert_rejected(
            KvRequest::Get {
                key: big_key.clone(),
            },
            key_err.clone(),
        );
        assert_rejected(
            KvRequest::Delete {
                key: big_key.clone(),
            },
            key_err.clone(),
        );
        assert_rejected(
            KvRequest::Put {
                key: big_key.clone(),
                value: vec![],
            },
            key_err.clone(),
        );
        assert_rejected(
            KvRequest::Put {
                key: k("a"),
                value: big_value.clone(),
            },
            value_err.clone(),
        );
        assert_rejected(
            KvRequest::CompareAndSet {
                key: k("keep"),
                expected: Some(k("me")),
                new: Some(big_value.clone()),
            },
            value_err.clone(),
        );
        assert_rejected(
            KvRequest::CompareAndSet {
                key: k("keep"),
                expected: Some(big_value.clone()),
                new: None,
            },
            value_err.clone(),
        );
        assert_rejected(
            KvRequest::Range {
                start: vec![],
                end: Some(big_key.clone()),
                limit: 1,
            },
            key_err.clone(),
        );
        for limit in [0, MAX_RANGE_LIMIT + 1] {
            assert_rejected(
                KvRequest::Range {
                    start: vec![],
                    end: None,
                    limit,
                },
                KvError::RangeLimitOutOfBounds {
                    limit,
                    max: MAX_RANGE_LIMIT,
                },
            );
        }
        // A transaction is validated as a whole: the first writes are fine, a later one is not.
        assert_rejected(
            KvRequest::Transaction {
                preconditions: vec![],
                writes: vec![(k("keep"), None), (k("b"), Some(big_value))],
            },
            value_err,
        );
        assert_rejected(
            KvRequest::Transaction {
                preconditions: vec![(big_key, None)],
                writes: vec![(k("keep"), None)],
            },
            key_err,
        );
        assert_rejected(
            KvRequest::Transaction {
                preconditions: vec![(k("keep"), Some(k("me"))); MAX_TXN_OPS / 2],
                writes: vec![(k("keep"), None); MAX_TXN_OPS / 2 + 1],
            },
            KvError::TooManyTransactionOps {
                ops: MAX_TXN_OPS as u64 + 1,
                max: MAX_TXN_OPS as u64,
            },
        );
        // At the limits everything is accepted.
        let mut s = KvStore::new();
        let reply = exec(
            &mut s,
            KvRequest::Transaction {
                preconditions: vec![],
                writes: (0..MAX_TXN_OPS as u16)
                    .map(|i| {
                        let mut key = vec![0; MAX_KEY_SIZE];
                        key[..2].copy_from_slice(&i.to_be_bytes());
                        (key, Some(vec![1; MAX_VALUE_SIZE]))
                    })
                    .collect(),
            },
        );
        assert_eq!(reply, KvReply::Committed);
        assert_eq!(s.len(), MAX_TXN_OPS);
    }

    #[test]
    fn malformed_and_oversized_requests_get_error_replies() {
        let mut s = KvStore::new();
        for bytes in [
            &b""[..],
            b"MF",
            b"XX\x01\x00",
            b"MF\x01\x09",
            b"MF\x01\x00\xff\xff\xff\xff\x0f",
        ] {
            let reply = decode_reply(&s.execute(bytes)).unwrap();
            assert!(
                matches!(reply, KvReply::Error(KvError::Malformed { .. })),
                "{reply:?}"
            );
        }
        let mut huge = encode_request(&KvRequest::Get { key: k("a") }).unwrap();
        huge.resize(MAX_REQUEST_SIZE + 1, 0);
        let reply = decode_reply(&s.execute(&huge)).unwrap();
        assert!(
            matches!(reply, KvReply::Error(KvError::Malformed { reason }) if reason.contains("exceeds"))
        );
        assert!(s.is_empty());
    }

    #[test]
    fn snapshot_roundtrip_and_known_layout() {
        let mut s = KvStore::new();
        put(&mut s, "b", "2");
        put(&mut s, "a", "");
        let snap = s.snapshot();
        let mut expected = b"MFKV\x01".to_vec();
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0, b'a', 0, 0, 0, 0]);
        expected.extend_from_slice(&[1, 0, 0, 0, b'b', 1, 0, 0, 0, b'2']);
        assert_eq!(snap, expected);
        let mut t = KvStore::new();
        put(&mut t, "other", "state");
        t.restore(&snap).unwrap();
        assert_eq!(t, s);
        assert_eq!(t.digest(), s.digest());
        assert_ne!(KvStore::new().digest(), s.digest());
        assert_eq!(
            KvStore::new().digest(),
            maftia_crypto::hash::hash(DIGEST_CONTEXT, &[&KvStore::new().snapshot()])
        );
    }

    fn entry(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = (key.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn snapshot_of(count: u64, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"MFKV\x01".to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        for e in entries {
            out.extend_from_slice(e);
        }
        out
    }

    #[test]
    fn restore_rejects_invalid_snapshots_and_keeps_state() {
        let cases: Vec<(Vec<u8>, SnapshotError)> = vec![
            (b"MFK".to_vec(), SnapshotError::Truncated),
            (b"XXKV\x01".to_vec(), SnapshotError::BadMagic),
            (
                b"MFKV\x02".to_vec(),
                SnapshotError::UnsupportedVersion { found: 2 },
            ),
            (b"MFKV\x01\x00".to_vec(), SnapshotError::Truncated),
            (
                snapshot_of(2, &[entry(b"a", b"1")]),
                SnapshotError::Truncated,
            ),
            (
                snapshot_of(u64::MAX, &[entry(b"a", b"1")]),
                SnapshotError::Truncated,
            ),
            (
                snapshot_of(2, &[entry(b"b", b"1"), entry(b"a", b"1")]),
                SnapshotError::KeysNotStrictlyIncreasing { index: 1 },
            ),
            (
                snapshot_of(2, &[entry(b"a", b"1"), entry(b"a", b"2")]),
                SnapshotError::KeysNotStrictlyIncreasing { index: 1 },
            ),
            (
                snapshot_of(1, &[entry(&[0; MAX_KEY_SIZE + 1], b"")]),
                SnapshotError::KeyTooLarge {
                    index: 0,
                    size: MAX_KEY_SIZE as u64 + 1,
                },
            ),
            (
                snapshot_of(1, &[entry(b"a", &[0; MAX_VALUE_SIZE + 1])]),
                SnapshotError::ValueTooLarge {
                    index: 0,
                    size: MAX_VALUE_SIZE as u64 + 1,
                },
            ),
            (
                snapshot_of(1, &[entry(b"a", b"1"), vec![0]]),
                SnapshotError::TrailingBytes { extra: 1 },
            ),
            // A length prefix claiming 4 GiB in a tiny snapshot is caught before any allocation.
            (
                snapshot_of(1, &[vec![0xff, 0xff, 0xff, 0xff]]),
                SnapshotError::KeyTooLarge {
                    index: 0,
                    size: u32::MAX as u64,
                },
            ),
            (
                snapshot_of(1, &[vec![1, 0, 0, 0, b'a', 0xff, 0xff, 0xff, 0]]),
                SnapshotError::ValueTooLarge {
                    index: 0,
                    size: 0xff_ffff,
                },
            ),
            (
                snapshot_of(1, &[vec![1, 0, 0, 0, b'a', 5, 0, 0, 0, b'x']]),
                SnapshotError::Truncated,
            ),
        ];
        for (snap, expected) in cases {
            let mut s = KvStore::new();
            put(&mut s, "keep", "me");
            let before = s.clone();
            assert_eq!(s.restore(&snap), Err(expected));
            assert_eq!(s, before);
        }
    }
}
