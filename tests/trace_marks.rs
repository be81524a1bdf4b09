//! The guest's marks: every GET_ID writes a `get_id` trace event, in order
//! with the keyslot events around it, so the host can replay the trace up
//! to the n-th mark (lab/src/marks.rs).

mod ice;
mod support;

use ice::{Session, random_key};
use icelab_emulator::protocol::{KeyDesc, RequestType, Status};
use icelab_frontend::blk::Request;

const MIB: u64 = 1 << 20;

#[test]
fn each_get_id_writes_one_get_id_event_in_order_with_keyslot_events() {
    let mut session = Session::start(8 * MIB, &["--queues", "2"]);
    let key = random_key();
    session.expect(0, &Request::get_id(), Status::Ok);
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(1, &key, 4096, 8)),
        Status::Ok,
    );
    session.expect(1, &Request::get_id(), Status::Ok);
    session.expect(
        session.control(),
        &Request::keyslot_evict_slot(1),
        Status::Ok,
    );
    session.expect(0, &Request::get_id(), Status::Ok);

    let events = session.trace_events();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["get_id", "program", "get_id", "evict", "get_id"]);
    let queues: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "get_id")
        .filter_map(|e| e["queue"].as_u64())
        .collect();
    assert_eq!(queues, [0, 1, 0], "each event names its queue");
    let times: Vec<f64> = events.iter().filter_map(|e| e["t"].as_f64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn a_refused_get_id_is_no_mark() {
    let mut session = Session::start(8 * MIB, &[]);
    // No room for the 20-byte answer: refused, so it must not count as a
    // mark (the guest's read failed too).
    let short = Request::raw(RequestType::GetId, 0).with_data_in(4);
    session.expect(0, &short, Status::IoErr);
    let trace = std::fs::read_to_string(&session.trace).expect("trace file");
    assert!(!trace.contains("\"get_id\""), "{trace}");
    assert!(trace.contains("\"reject\""), "{trace}");
}
