//! The guest is untrusted: every malformed request gets IOERR or UNSUPP (or,
//! with no room for a status, its chain back with used length 0), the image
//! stays byte-for-byte unchanged, and the next valid request succeeds.

mod ice;
mod support;

use ice::{Session, msg, random_bytes, random_key};
use icelab_emulator::protocol::{DiscardSegment, KeyDesc, RequestType, Status};
use icelab_frontend::blk::{Completion, Request, STATUS_NOT_WRITTEN};
use icelab_frontend::{RawDescriptor, RawNext, Segment};
use support::stat_u64;

const IMAGE_SIZE: u64 = 4 << 20;
const CAPACITY_SECTORS: u64 = IMAGE_SIZE / 512;
/// Far outside the frontend's 64 MiB of guest memory.
const OUTSIDE_MEMORY: u64 = 1 << 40;

/// What a case must get back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Status(Status),
    /// No writable byte: the chain comes back with used length 0.
    NoStatus,
}

use Expect::NoStatus;
const IOERR: Expect = Expect::Status(Status::IoErr);
const UNSUPP: Expect = Expect::Status(Status::Unsupp);

type Submit = fn(&mut Session) -> Completion;

/// Submits `request` with its well-formed chain edited by `edit`.
fn edited(
    session: &mut Session,
    request: Request,
    edit: impl FnOnce(&mut Vec<Segment>),
) -> Completion {
    let queue = &mut session.queues[0];
    let mut prepared = request.prepare(queue.queue().memory()).expect("prepare");
    edit(&mut prepared.segments);
    let tag = queue.enqueue_prepared(prepared).expect("enqueue");
    queue.kick_always().expect("kick");
    queue
        .wait_for(tag, ice::REQUEST_TIMEOUT)
        .expect("completion")
}

/// Submits `request`'s segments as raw descriptors built by `build`.
fn raw(
    session: &mut Session,
    request: Request,
    build: impl FnOnce(&[Segment]) -> Vec<RawDescriptor>,
) -> Completion {
    let queue = &mut session.queues[0];
    let prepared = request.prepare(queue.queue().memory()).expect("prepare");
    let descriptors = build(&prepared.segments);
    let tag = queue
        .submit_raw(prepared, &descriptors, Vec::new())
        .expect("submit raw");
    queue
        .wait_for(tag, ice::REQUEST_TIMEOUT)
        .expect("completion")
}

/// The segments linked in order, the last one's `next` replaced.
fn linked(segments: &[Segment], last_next: RawNext) -> Vec<RawDescriptor> {
    let count = segments.len();
    segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let next = if i + 1 < count {
                RawNext::Index(i + 1)
            } else {
                last_next
            };
            RawDescriptor::from_segment(*s).with_next(next)
        })
        .collect()
}

fn program(slot: u32, edit: fn(&mut icelab_emulator::protocol::KeyDesc)) -> Request {
    let mut desc = KeyDesc::raw_aes_256_xts(slot, &[0x5a; 64], 4096, 8);
    edit(&mut desc);
    Request::keyslot_program(&desc)
}

/// KEYSLOT_PROGRAM of a valid 152-byte key_desc followed by four more
/// bytes: the 156-byte layout icelab used before following the draft.
fn program_with_trailing_reserved(slot: u32) -> Request {
    let desc = KeyDesc::raw_aes_256_xts(slot, &[0x5a; 64], 4096, 8);
    let mut wire = desc.encode().to_vec();
    wire.extend_from_slice(&[0; 4]);
    Request::raw(RequestType::KeyslotProgram, 0).with_key_payload(&wire)
}

fn crypto_write(sector: u64, slot: u32, dun: u128, len: usize) -> Request {
    Request::crypto_write(sector, &msg(slot, dun), random_bytes(len))
}

/// Every case: name, request, expected outcome. Slot 0 is programmed with
/// 4096-byte data units and 8 DUN bytes; slot 1 is empty.
fn cases() -> Vec<(&'static str, Submit, Expect)> {
    vec![
        (
            "crypto-out to a slot out of range",
            |s| s.run(0, &crypto_write(0, 32, 0, 4096)),
            IOERR,
        ),
        (
            "crypto-out to an unprogrammed slot",
            |s| s.run(0, &crypto_write(0, 1, 0, 4096)),
            IOERR,
        ),
        (
            "crypto-out not aligned to the data unit",
            |s| s.run(0, &crypto_write(1, 0, 0, 4096)),
            IOERR,
        ),
        (
            "crypto-out with a partial data unit",
            |s| s.run(0, &crypto_write(0, 0, 0, 2048)),
            IOERR,
        ),
        (
            "crypto-out whose DUN range overflows dun_bytes",
            |s| s.run(0, &crypto_write(0, 0, u64::MAX as u128, 8192)),
            IOERR,
        ),
        (
            "crypto-out with zero-length data",
            |s| s.run(0, &crypto_write(0, 0, 0, 0)),
            IOERR,
        ),
        (
            "crypto-out beyond capacity",
            |s| s.run(0, &crypto_write(CAPACITY_SECTORS - 8, 0, 0, 8192)),
            IOERR,
        ),
        (
            "crypto-out with a short crypto_msg",
            |s| {
                s.run(
                    0,
                    &Request::raw(RequestType::CryptoOut, 0)
                        .with_payload(vec![0; 20])
                        .with_data_out(random_bytes(4096)),
                )
            },
            IOERR,
        ),
        (
            "crypto-in from an unprogrammed slot",
            |s| s.run(0, &Request::crypto_read(0, &msg(1, 0), 4096)),
            IOERR,
        ),
        (
            "crypto-in whose DUN range overflows dun_bytes",
            |s| s.run(0, &Request::crypto_read(0, &msg(0, 1 << 64), 4096)),
            IOERR,
        ),
        (
            "crypto-in not a multiple of 512",
            |s| s.run(0, &Request::crypto_read(0, &msg(0, 0), 100)),
            IOERR,
        ),
        (
            "program with a wrong key size",
            |s| s.run(s.control(), &program(1, |d| d.key_size = 32)),
            IOERR,
        ),
        (
            "program with an unsupported mode",
            |s| s.run(s.control(), &program(1, |d| d.crypto_mode = 2)),
            UNSUPP,
        ),
        (
            "program with the reserved mode 0",
            |s| s.run(s.control(), &program(1, |d| d.crypto_mode = 0)),
            UNSUPP,
        ),
        (
            "program with an unsupported data unit size",
            |s| s.run(s.control(), &program(1, |d| d.data_unit_size_bits = 13)),
            UNSUPP,
        ),
        (
            "program with an unknown key type",
            |s| s.run(s.control(), &program(1, |d| d.key_type = 3)),
            UNSUPP,
        ),
        (
            "program of a raw key as a hardware-wrapped one",
            |s| s.run(s.control(), &program(1, |d| d.key_type = 2)),
            IOERR,
        ),
        (
            "program with dun_bytes over max_dun_bytes",
            |s| s.run(s.control(), &program(1, |d| d.dun_bytes = 9)),
            UNSUPP,
        ),
        (
            "program with dun_bytes 0",
            |s| s.run(s.control(), &program(1, |d| d.dun_bytes = 0)),
            IOERR,
        ),
        (
            "program a slot out of range",
            |s| s.run(s.control(), &program(32, |_| {})),
            IOERR,
        ),
        (
            "program with a short key_desc",
            |s| {
                s.run(
                    s.control(),
                    &Request::raw(RequestType::KeyslotProgram, 0).with_key_payload(&[0; 100]),
                )
            },
            IOERR,
        ),
        (
            "program with a 156-byte key_desc (an older, unpublished layout)",
            |s| s.run(s.control(), &program_with_trailing_reserved(1)),
            IOERR,
        ),
        (
            "keyslot program on a request queue",
            |s| s.run(0, &program(1, |_| {})),
            UNSUPP,
        ),
        (
            "keyslot evict on a request queue",
            |s| s.run(0, &Request::keyslot_evict_slot(0)),
            UNSUPP,
        ),
        (
            "get crypto modes on a request queue",
            |s| s.run(0, &Request::get_crypto_modes()),
            UNSUPP,
        ),
        (
            "crypto-out on the control queue",
            |s| s.run(s.control(), &crypto_write(0, 0, 0, 4096)),
            UNSUPP,
        ),
        (
            "crypto-in on the control queue",
            |s| s.run(s.control(), &Request::crypto_read(0, &msg(0, 0), 4096)),
            UNSUPP,
        ),
        (
            "plain write on the control queue",
            |s| s.run(s.control(), &Request::write(0, random_bytes(4096))),
            UNSUPP,
        ),
        (
            "evict a slot out of range",
            |s| s.run(s.control(), &Request::keyslot_evict_slot(99)),
            IOERR,
        ),
        (
            "short request header",
            |s| {
                edited(s, Request::write(0, random_bytes(512)), |segs| {
                    segs[0].len = 8
                })
            },
            IOERR,
        ),
        (
            "missing status byte",
            |s| {
                edited(s, Request::write(0, random_bytes(4096)), |segs| {
                    segs.pop();
                })
            },
            NoStatus,
        ),
        (
            "descriptor outside guest memory",
            |s| {
                edited(s, Request::write(0, random_bytes(4096)), |segs| {
                    segs[1].addr = OUTSIDE_MEMORY
                })
            },
            IOERR,
        ),
        (
            "readable descriptor after a writable one",
            |s| {
                raw(s, Request::write(0, random_bytes(4096)), |segs| {
                    linked(&[segs[0], segs[2], segs[1]], RawNext::End)
                })
            },
            IOERR,
        ),
        (
            "descriptor chain loop",
            |s| {
                raw(s, Request::write(0, random_bytes(4096)), |segs| {
                    linked(segs, RawNext::Index(segs.len() - 1))
                })
            },
            IOERR,
        ),
        (
            "next index past the descriptor table",
            |s| {
                raw(s, Request::write(0, random_bytes(4096)), |segs| {
                    linked(segs, RawNext::Absolute(60000))
                })
            },
            IOERR,
        ),
        (
            "indirect table with a length that is not whole descriptors",
            |s| {
                raw(s, Request::write(0, random_bytes(4096)), |segs| {
                    vec![RawDescriptor {
                        len: 20,
                        ..RawDescriptor::indirect(segs[0].addr, 1)
                    }]
                })
            },
            NoStatus,
        ),
        (
            "write with zero-length data",
            |s| s.run(0, &Request::write(0, Vec::new())),
            IOERR,
        ),
        (
            "write not a multiple of 512",
            |s| s.run(0, &Request::write(0, random_bytes(100))),
            IOERR,
        ),
        (
            "write beyond capacity",
            |s| s.run(0, &Request::write(CAPACITY_SECTORS, random_bytes(512))),
            IOERR,
        ),
        (
            "read at a sector whose byte offset overflows",
            |s| s.run(0, &Request::read(u64::MAX, 512)),
            IOERR,
        ),
        (
            "write larger than seg_max x size_max",
            |s| s.run(0, &Request::write(0, random_bytes(9 << 20))),
            IOERR,
        ),
        (
            "unknown request type",
            |s| s.run(0, &Request::raw(RequestType::Unsupported(99), 0)),
            UNSUPP,
        ),
        (
            "DERIVE_SW_SECRET of a blob the device never wrapped",
            |s| {
                let blob = icelab_frontend::blk::key_blob(&[0x5a; 76]).expect("fits");
                s.run(s.control(), &Request::derive_sw_secret(&blob))
            },
            IOERR,
        ),
        (
            "GENERATE_KEY with an answer buffer shorter than a key_blob",
            |s| {
                s.run(
                    s.control(),
                    &Request::raw(RequestType::GenerateKey, 0).with_data_in(100),
                )
            },
            IOERR,
        ),
        (
            "discard with the unmap flag",
            |s| {
                s.run(
                    0,
                    &Request::discard(&[DiscardSegment {
                        sector: 0,
                        num_sectors: 8,
                        flags: 1,
                    }]),
                )
            },
            UNSUPP,
        ),
        (
            "write-zeroes with a reserved flag",
            |s| {
                s.run(
                    0,
                    &Request::write_zeroes(&[DiscardSegment {
                        sector: 0,
                        num_sectors: 8,
                        flags: 2,
                    }]),
                )
            },
            UNSUPP,
        ),
        (
            "discard beyond capacity",
            |s| {
                s.run(
                    0,
                    &Request::discard(&[DiscardSegment {
                        sector: CAPACITY_SECTORS - 1,
                        num_sectors: 8,
                        flags: 0,
                    }]),
                )
            },
            IOERR,
        ),
        (
            "discard payload that is not whole segments",
            |s| {
                s.run(
                    0,
                    &Request::raw(RequestType::Discard, 0).with_payload(vec![0; 10]),
                )
            },
            IOERR,
        ),
        (
            "get-id with a buffer shorter than 20 bytes",
            |s| s.run(0, &Request::raw(RequestType::GetId, 0).with_data_in(10)),
            IOERR,
        ),
        (
            "get-crypto-modes with a buffer shorter than modes[2]",
            |s| {
                s.run(
                    s.control(),
                    &Request::raw(RequestType::GetCryptoModes, 0).with_data_in(4),
                )
            },
            IOERR,
        ),
    ]
}

/// Fills the image with a pattern so any stray write shows.
fn prefilled_session(args: &[&str]) -> Session {
    let session = Session::start(IMAGE_SIZE, args);
    std::fs::write(&session.image, support::pattern(7, IMAGE_SIZE as usize))
        .expect("fill the image");
    session
}

#[track_caller]
fn check(session: &mut Session, name: &str, submit: Submit, expect: Expect) {
    let before = session.image_bytes();
    let completion = submit(session);
    match expect {
        Expect::Status(status) => {
            assert_eq!(
                completion.status(),
                Some(status),
                "{name}: status byte {}\n{}",
                completion.status,
                session.device.logs()
            );
            assert_eq!(
                completion.used_len, 1,
                "{name}: only the status byte is written"
            );
            assert!(
                completion.data.iter().all(|b| *b == 0),
                "{name}: no data reaches the guest"
            );
        }
        Expect::NoStatus => {
            assert_eq!(
                completion.status, STATUS_NOT_WRITTEN,
                "{name}: nothing to write a status to"
            );
            assert_eq!(completion.used_len, 0, "{name}: used length");
        }
    }
    assert!(session.image_bytes() == before, "{name}: the image changed");
    // The device keeps serving.
    let read = session.run(0, &Request::crypto_read(8, &msg(0, 1), 4096));
    assert_eq!(
        read.status(),
        Some(Status::Ok),
        "{name}: the next valid request fails\n{}",
        session.device.logs()
    );
    assert_eq!(
        session.run(0, &Request::get_id()).status(),
        Some(Status::Ok),
        "{name}: GET_ID after"
    );
}

#[test]
fn malformed_requests_get_a_status_and_touch_nothing() {
    let cases = cases();
    assert!(cases.len() >= 40, "the matrix must keep at least 40 cases");
    let mut session = prefilled_session(&[]);
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &random_key(), 4096, 8)),
        Status::Ok,
    );
    for (name, submit, expect) in &cases {
        check(&mut session, name, *submit, *expect);
    }
    let stats = session.finish();
    let refused = cases.len() as u64;
    assert_eq!(
        stat_u64(&stats, "stats.rejected.total"),
        refused,
        "every case is counted as rejected"
    );
    assert_eq!(
        stat_u64(&stats, "stats.keyslots.programmed"),
        1,
        "no bad program took effect"
    );
}

#[test]
fn writes_to_a_read_only_device_are_refused() {
    let read_only_cases: [(&str, Submit, Expect); 4] = [
        (
            "plain write",
            |s| s.run(0, &Request::write(0, random_bytes(4096))),
            IOERR,
        ),
        (
            "crypto write",
            |s| s.run(0, &crypto_write(0, 0, 0, 4096)),
            IOERR,
        ),
        (
            "discard",
            |s| {
                s.run(
                    0,
                    &Request::discard(&[DiscardSegment {
                        sector: 0,
                        num_sectors: 8,
                        flags: 0,
                    }]),
                )
            },
            IOERR,
        ),
        (
            "write zeroes",
            |s| {
                s.run(
                    0,
                    &Request::write_zeroes(&[DiscardSegment {
                        sector: 0,
                        num_sectors: 8,
                        flags: 0,
                    }]),
                )
            },
            IOERR,
        ),
    ];
    let mut session = prefilled_session(&["--read-only"]);
    assert!(
        session
            .frontend
            .has_feature(icelab_emulator::protocol::VIRTIO_BLK_F_RO)
    );
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &random_key(), 4096, 8)),
        Status::Ok,
    );
    for (name, submit, expect) in read_only_cases {
        check(&mut session, name, submit, expect);
    }
    session.expect(0, &Request::flush(), Status::Ok);
    let stats = session.finish();
    assert_eq!(stat_u64(&stats, "stats.rejected.by_kind.read-only"), 4);
}

#[test]
fn a_flood_of_garbage_chains_does_not_hang_or_crash_the_device() {
    let mut session = prefilled_session(&["--queues", "1"]);
    session.expect(
        session.control(),
        &Request::keyslot_program(&KeyDesc::raw_aes_256_xts(0, &random_key(), 4096, 8)),
        Status::Ok,
    );
    for round in 0..200u32 {
        let mut header = random_bytes(16 + (round as usize % 64));
        // Keep the type among the interesting ones half of the time.
        if round % 2 == 0 {
            header[..4].copy_from_slice(&(round % 40).to_le_bytes());
        }
        let request = Request::raw(RequestType::Unsupported(0), 0).with_payload(header);
        let completion = edited(&mut session, request, |segs| {
            // Replace the 16-byte outhdr by the random bytes as one segment.
            let payload = segs.remove(1);
            segs[0].len = payload.len;
            segs[0].addr = payload.addr;
        });
        assert!(
            matches!(
                completion.status(),
                Some(Status::IoErr | Status::Unsupp | Status::Ok)
            ),
            "round {round}: status {}",
            completion.status
        );
    }
    // Random types 0..40 include OUT, DISCARD and WRITE_ZEROES at random
    // sectors, which may legitimately succeed: the image is not compared
    // here, only that every chain got an answer and service goes on.
    assert_eq!(
        session
            .run(0, &Request::crypto_read(8, &msg(0, 1), 4096))
            .status(),
        Some(Status::Ok)
    );
    session.finish();
}
