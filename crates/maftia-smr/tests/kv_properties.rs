//! Property tests of the key-value state machine through the byte-level `StateMachine` interface.
use maftia_smr::kv::{decode_reply, encode_request, KvError, KvReply, KvRequest, KvStore};
use maftia_smr::StateMachine;
use proptest::prelude::*;

/// Small key and value spaces so that requests collide on keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..4, 0..3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 0..3)
}

fn pairs() -> impl Strategy<Value = Vec<(Vec<u8>, Option<Vec<u8>>)>> {
    proptest::collection::vec((key(), proptest::option::of(value())), 0..5)
}

fn request() -> impl Strategy<Value = KvRequest> {
    prop_oneof![
        key().prop_map(|key| KvRequest::Get { key }),
        (key(), value()).prop_map(|(key, value)| KvRequest::Put { key, value }),
        key().prop_map(|key| KvRequest::Delete { key }),
        (
            key(),
            proptest::option::of(value()),
            proptest::option::of(value())
        )
            .prop_map(|(key, expected, new)| KvRequest::CompareAndSet {
                key,
                expected,
                new
            }),
        (key(), proptest::option::of(key()), 0u32..6)
            .prop_map(|(start, end, limit)| KvRequest::Range { start, end, limit }),
        (pairs(), pairs()).prop_map(|(preconditions, writes)| KvRequest::Transaction {
            preconditions,
            writes
        }),
    ]
}

/// Request bytes: mostly valid encodings, some arbitrary garbage.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => request().prop_map(|r| encode_request(&r).unwrap()),
        1 => proptest::collection::vec(any::<u8>(), 0..32),
    ]
}

fn store_from(requests: &[KvRequest]) -> KvStore {
    let mut store = KvStore::new();
    for r in requests {
        store.execute(&encode_request(r).unwrap());
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Two replicas executing the same sequence give identical reply bytes and digests at every step.
    #[test]
    fn execution_is_deterministic(requests in proptest::collection::vec(request_bytes(), 0..40)) {
        let (mut a, mut b) = (KvStore::new(), KvStore::new());
        for bytes in &requests {
            let (ra, rb) = (a.execute(bytes), b.execute(bytes));
            prop_assert_eq!(&ra, &rb);
            prop_assert!(decode_reply(&ra).is_ok());
            prop_assert_eq!(a.digest(), b.digest());
        }
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }

    /// Snapshot then restore (into a store with other state) gives an equal store, digest and
    /// snapshot, and both behave identically afterwards.
    #[test]
    fn snapshot_restore_roundtrip(
        history in proptest::collection::vec(request(), 0..40),
        other in proptest::collection::vec(request(), 0..10),
        after in proptest::collection::vec(request(), 0..10),
    ) {
        let mut original = store_from(&history);
        let mut restored = store_from(&other);
        restored.restore(&original.snapshot()).unwrap();
        prop_assert_eq!(&restored, &original);
        prop_assert_eq!(restored.digest(), original.digest());
        prop_assert_eq!(restored.snapshot(), original.snapshot());
        for r in &after {
            let bytes = encode_request(r).unwrap();
            prop_assert_eq!(original.execute(&bytes), restored.execute(&bytes));
        }
        prop_assert_eq!(restored.digest(), original.digest());
    }

    /// Digests separate different states (over the generated small state space).
    #[test]
    fn different_states_have_different_digests(
        x in proptest::collection::vec(request(), 0..20),
        y in proptest::collection::vec(request(), 0..20),
    ) {
        let (a, b) = (store_from(&x), store_from(&y));
        prop_assert_eq!(a == b, a.digest() == b.digest());
    }

    /// A transaction with at least one failing precondition changes nothing and names exactly
    /// the failing preconditions.
    #[test]
    fn failing_transaction_changes_nothing(
        history in proptest::collection::vec(request(), 0..30),
        preconditions in pairs(),
        writes in pairs(),
        failing_key in key(),
    ) {
        let mut store = store_from(&history);
        // Add a precondition that certainly fails: expect a value different from the current one.
        let wrong = match store.get(&failing_key) {
            Some(_) => None,
            None => Some(vec![9]),
        };
        let mut preconditions = preconditions;
        preconditions.push((failing_key, wrong));
        let expected_failed: Vec<u32> = preconditions
            .iter()
            .enumerate()
            .filter(|(_, (k, v))| store.get(k) != v.as_deref())
            .map(|(i, _)| i as u32)
            .collect();
        let before = store.clone();
        let digest = store.digest();
        let request = KvRequest::Transaction { preconditions, writes };
        let reply = decode_reply(&store.execute(&encode_request(&request).unwrap())).unwrap();
        prop_assert_eq!(reply, KvReply::Aborted { failed_preconditions: expected_failed });
        prop_assert_eq!(&store, &before);
        prop_assert_eq!(store.digest(), digest);
    }

    /// Arbitrary bytes, framed or not, never panic, change nothing when not a valid request,
    /// and get a decodable error reply.
    #[test]
    fn arbitrary_bytes_give_error_reply(
        history in proptest::collection::vec(request(), 0..10),
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut framed = maftia_core::codec::MAGIC.to_vec();
        framed.push(maftia_core::codec::WIRE_VERSION);
        framed.extend_from_slice(&bytes);
        for input in [&bytes, &framed] {
            let mut store = store_from(&history);
            let before = store.clone();
            let reply = decode_reply(&store.execute(input)).unwrap();
            if maftia_core::codec::decode::<KvRequest>(input).is_err() {
                prop_assert!(
                    matches!(reply, KvReply::Error(KvError::Malformed { .. })),
                    "{:?}", reply
                );
                prop_assert_eq!(&store, &before);
            }
        }
    }

    /// Restoring arbitrary bytes never panics; on failure the state is unchanged, on success
    /// the snapshot re-encodes to exactly the same bytes (the encoding is canonical).
    #[test]
    fn restore_of_arbitrary_bytes(
        history in proptest::collection::vec(request(), 0..10),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        count in 0u64..4,
    ) {
        let mut snap = b"MFKV\x01".to_vec();
        snap.extend_from_slice(&count.to_le_bytes());
        snap.extend_from_slice(&tail);
        let mut store = store_from(&history);
        let before = store.clone();
        match store.restore(&snap) {
            Ok(()) => prop_assert_eq!(store.snapshot(), snap),
            Err(_) => prop_assert_eq!(&store, &before),
        }
    }
}
