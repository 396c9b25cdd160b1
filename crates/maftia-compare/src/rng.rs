//! [`Rng04`]: maftia's `rand_core` 0.6 RNG seen through the `rand_core` 0.4 `RngCore` trait that
//! hbbft 0.1.1 (rand 0.6) takes, so that hbbft draws from the harness's seeded per-node RNG and
//! a run stays reproducible from its seed.

/// Forwards every draw to the wrapped `rand_core` 0.6 RNG.
pub struct Rng04<'a>(pub &'a mut dyn rand_core::RngCore);

impl rand_core_04::RngCore for Rng04<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_04::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// The harness's RNGs are cryptographic (ChaCha20); hbbft only asks for `Rng`, but say so.
impl rand_core_04::CryptoRng for Rng04<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    #[test]
    fn forwards_the_wrapped_stream() {
        let mut direct = ChaCha20Rng::seed_from_u64(7);
        let mut wrapped_source = ChaCha20Rng::seed_from_u64(7);
        let mut wrapped = Rng04(&mut wrapped_source);
        let a = (direct.next_u32(), direct.next_u64());
        let b = (
            rand_core_04::RngCore::next_u32(&mut wrapped),
            rand_core_04::RngCore::next_u64(&mut wrapped),
        );
        assert_eq!(a, b);
        let mut x = [0u8; 33];
        let mut y = [0u8; 33];
        direct.fill_bytes(&mut x);
        rand_core_04::RngCore::try_fill_bytes(&mut wrapped, &mut y).unwrap();
        assert_eq!(x, y);
    }
}
