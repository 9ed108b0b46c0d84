#![no_main]
//! See steer::fuzzing::route_select.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| steer::fuzzing::route_select(data));
