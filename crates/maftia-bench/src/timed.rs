//! [`TimedSigner`]: a [`ThresholdSigner`] wrapper that measures where threshold-signature time
//! goes (bench code only: it reads the clock).
use maftia_crypto::threshold::{CombineError, SignerIndex, ThresholdSigner};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A count of calls and the time they took.
#[derive(Default, Debug)]
pub struct OpCounter {
    calls: AtomicU64,
    nanos: AtomicU64,
}

impl OpCounter {
    fn record(&self, started: Instant) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Time `f` and count it.
    pub fn time<T>(&self, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = f();
        self.record(started);
        result
    }

    /// Add one call of `nanos` nanoseconds.
    pub fn add(&self, nanos: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Op {
        Op {
            calls: self.calls.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

/// Calls of one operation and their total time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Op {
    pub calls: u64,
    pub seconds: f64,
}

impl Op {
    /// `self − earlier` (the calls between two snapshots).
    pub fn since(&self, earlier: &Op) -> Op {
        Op {
            calls: self.calls.saturating_sub(earlier.calls),
            seconds: (self.seconds - earlier.seconds).max(0.0),
        }
    }
}

/// The counters of one key set, shared by every node's [`TimedSigner`] of that key set.
#[derive(Default, Debug)]
pub struct SignerCounters {
    pub sign_share: OpCounter,
    pub verify_share: OpCounter,
    /// Interpolation only ([`ThresholdSigner::combine_unchecked`]); the verification the
    /// optimistic combine does afterwards is counted under `verify`.
    pub combine: OpCounter,
    pub verify: OpCounter,
}

impl SignerCounters {
    pub fn snapshot(&self) -> SignerOps {
        SignerOps {
            sign_share: self.sign_share.snapshot(),
            verify_share: self.verify_share.snapshot(),
            combine: self.combine.snapshot(),
            verify: self.verify.snapshot(),
        }
    }
}

/// Threshold-signature operations of one key set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SignerOps {
    pub sign_share: Op,
    pub verify_share: Op,
    /// Interpolation of shares (without the verification that follows it).
    pub combine: Op,
    /// Full signature verifications: certificates, justifications and the optimistic check
    /// after every combine.
    pub verify: Op,
}

impl SignerOps {
    pub fn since(&self, earlier: &SignerOps) -> SignerOps {
        SignerOps {
            sign_share: self.sign_share.since(&earlier.sign_share),
            verify_share: self.verify_share.since(&earlier.verify_share),
            combine: self.combine.since(&earlier.combine),
            verify: self.verify.since(&earlier.verify),
        }
    }

    /// Seconds spent in all four operations.
    pub fn seconds(&self) -> f64 {
        self.sign_share.seconds
            + self.verify_share.seconds
            + self.combine.seconds
            + self.verify.seconds
    }
}

/// A [`ThresholdSigner`] that forwards to `inner` and adds the time of every operation to
/// shared [`SignerCounters`].
///
/// It keeps the trait's default [`ThresholdSigner::combine`] (the robust optimistic combine),
/// which calls back into this wrapper's `combine_unchecked`, `verify` and `verify_share`, so
/// each is timed once. A signer that overrides `combine` would lose its override here; none in
/// maftia does.
#[derive(Debug)]
pub struct TimedSigner<S> {
    inner: S,
    counters: Arc<SignerCounters>,
}

impl<S> TimedSigner<S> {
    pub fn new(inner: S, counters: Arc<SignerCounters>) -> Self {
        TimedSigner { inner, counters }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn counters(&self) -> &Arc<SignerCounters> {
        &self.counters
    }
}

impl<S: ThresholdSigner> ThresholdSigner for TimedSigner<S> {
    type Share = S::Share;
    type Signature = S::Signature;

    fn n(&self) -> usize {
        self.inner.n()
    }

    fn threshold(&self) -> usize {
        self.inner.threshold()
    }

    fn our_index(&self) -> SignerIndex {
        self.inner.our_index()
    }

    fn sign_share(&self, message: &[u8]) -> S::Share {
        self.counters
            .sign_share
            .time(|| self.inner.sign_share(message))
    }

    fn verify_share(&self, signer: SignerIndex, message: &[u8], share: &S::Share) -> bool {
        self.counters
            .verify_share
            .time(|| self.inner.verify_share(signer, message, share))
    }

    fn verify(&self, message: &[u8], signature: &S::Signature) -> bool {
        self.counters
            .verify
            .time(|| self.inner.verify(message, signature))
    }

    fn combine_unchecked(
        &self,
        shares: &[(SignerIndex, &S::Share)],
    ) -> Result<S::Signature, CombineError> {
        self.counters
            .combine
            .time(|| self.inner.combine_unchecked(shares))
    }

    fn signature_bytes(&self, signature: &S::Signature) -> Vec<u8> {
        self.inner.signature_bytes(signature)
    }
}
