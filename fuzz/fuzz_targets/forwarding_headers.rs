#![no_main]
//! See steer::fuzzing::forwarding_headers.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| steer::fuzzing::forwarding_headers(data));
