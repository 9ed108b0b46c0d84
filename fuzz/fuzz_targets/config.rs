#![no_main]
//! See steer::fuzzing::config.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| steer::fuzzing::config(data));
