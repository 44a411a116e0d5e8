//! Feeds arbitrary bytes to every decoder the transport uses. Run with
//! `cargo +nightly fuzz run decode` from `proto/` (see README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_proto::codec::decode;
use tandem_proto::{Command, Envelope, Reply, StatusReport};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Envelope<Command>>(data);
    let _ = decode::<Envelope<Reply>>(data);
    let _ = decode::<Envelope<StatusReport>>(data);
});
