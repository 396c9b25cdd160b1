//! Fuzz the ABC message handlers: arbitrary bytes decoded as ABC messages, delivered from any
//! claimed sender to a live node that may already be deep into an honest run (real BLS,
//! Ed25519 and TDH2 keys). Nothing may panic, and stored messages stay within the documented
//! bound. See `maftia_fuzz` (fuzz/src/lib.rs) for the input layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| maftia_fuzz::run::<maftia_fuzz::AbcFamily>(data));
