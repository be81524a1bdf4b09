//! The device writes its trace and stats as the contract's types
//! (`icelab_contract::device`), the ones the host reads back: every kind
//! of event the engine and the request path write parses as a
//! [`TraceLine`], and the stats agree with the trace.

use crate::device::image::Image;
use crate::device::refusal_log::RefusalLog;
use crate::device::request::{self, Context, Limits, Scratch};
use crate::engine::stats::StatsFile;
use crate::engine::trace::{
    EvictCause, EvictEvent, GetIdEvent, KeyMode, ProgramEvent, RejectStatus, TraceEvent, TraceLine,
};
use crate::engine::{Engine, ProfileName, Trace};
use crate::protocol::{
    CryptoMsg, DEVICE_ID_BYTES, Dun, KeyDesc, OutHeader, QueueRole, RequestType,
};
use icelab_contract::device::reject_kind;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const HEADER: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x3000;

/// A device's engine, image and guest memory.
struct Device {
    engine: Engine,
    image: Image,
    mem: GuestMemoryMmap,
}

impl Device {
    /// Writes `header` at [`HEADER`] and serves `chain` on request queue
    /// `queue` of a driver that negotiated inline encryption when
    /// `negotiated`.
    fn serve(&self, queue: u16, negotiated: bool, header: &OutHeader, chain: &[Descriptor]) {
        self.mem
            .write_slice(&header.encode(), GuestAddress(HEADER))
            .expect("header");
        let limits = Limits {
            max_data_bytes: 1 << 20,
            max_discard_seg: 32,
            max_discard_sectors: 1 << 20,
            device_id: [b'x'; DEVICE_ID_BYTES],
        };
        let refusals = RefusalLog::default();
        let ctx = Context {
            engine: &self.engine,
            image: &self.image,
            limits: &limits,
            queue,
            role: QueueRole::Request(queue),
            crypto_negotiated: negotiated,
            refusals: &refusals,
        };
        let chain = chain.iter().copied();
        request::serve(&ctx, &self.mem, chain, &mut Scratch::default());
    }
}

fn header(request_type: RequestType, sector: u64) -> OutHeader {
    OutHeader {
        request_type,
        ioprio: 0,
        sector,
    }
}

#[test]
fn the_trace_and_stats_the_device_writes_parse_as_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    let trace_path = dir.path().join("trace.jsonl");
    let trace = Trace::create(&trace_path).expect("trace");
    let device = Device {
        engine: Engine::new(Some(ProfileName::Ufs.capabilities()), Some(trace)),
        image: Image::open(&dir.path().join("disk.img"), Some(1 << 20), false).expect("image"),
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"),
    };
    let engine = &device.engine;
    let hdr = Descriptor::new(HEADER, OutHeader::SIZE as u32, NEXT, 1);
    let status = Descriptor::new(STATUS, 1, WRITE, 0);
    let get_id = [
        hdr,
        Descriptor::new(DATA, DEVICE_ID_BYTES as u32, WRITE | NEXT, 2),
        status,
    ];

    // A mark, two programs of one slot (the second replaces), a mark, an
    // explicit eviction, a program, three refusals (one without a header),
    // a reset.
    device.serve(0, true, &header(RequestType::GetId, 0), &get_id);
    let key_a = [0x11; 64];
    let key_b = [0x22; 64];
    let fp_a = engine
        .program(&KeyDesc::raw_aes_256_xts(3, &key_a, 4096, 8), 1)
        .expect("program");
    let fp_b = engine
        .program(&KeyDesc::raw_aes_256_xts(3, &key_b, 512, 4), 1)
        .expect("program");
    device.serve(0, true, &header(RequestType::GetId, 0), &get_id);
    engine
        .evict(&KeyDesc::raw_aes_256_xts(3, &[0; 64], 4096, 8), 1)
        .expect("evict");
    engine
        .program(&KeyDesc::raw_aes_256_xts(5, &key_a, 4096, 8), 1)
        .expect("program");
    let msg = CryptoMsg {
        slot: 7,
        reserved: 0,
        dun: Dun::from_u64(0),
    };
    device
        .mem
        .write_slice(&msg.encode(), GuestAddress(DATA))
        .expect("crypto msg");
    let crypto_in = [
        hdr,
        Descriptor::new(DATA, CryptoMsg::SIZE as u32, NEXT, 2),
        Descriptor::new(DATA + 0x1000, 4096, WRITE | NEXT, 3),
        status,
    ];
    // Not negotiated; a short header; a slot that holds no key.
    device.serve(0, false, &header(RequestType::CryptoIn, 8), &crypto_in);
    let short = [Descriptor::new(HEADER, 8, NEXT, 1), status];
    device.serve(0, true, &header(RequestType::In, 0), &short);
    device.serve(2, true, &header(RequestType::CryptoIn, 0), &crypto_in);
    engine.evict_all();

    let text = std::fs::read_to_string(&trace_path).expect("read the trace");
    let lines: Vec<TraceLine> = text
        .lines()
        .map(|line| TraceLine::from_json(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l.event.name()).collect();
    assert_eq!(
        names,
        [
            "get_id", "program", "program", "get_id", "evict", "program", "reject", "reject",
            "reject", "evict"
        ],
        "{text}"
    );
    assert!(lines.windows(2).all(|w| w[0].t <= w[1].t), "{text}");
    assert_eq!(lines[0].event, TraceEvent::GetId(GetIdEvent { queue: 0 }));
    assert_eq!(
        lines[2].event,
        TraceEvent::Program(ProgramEvent {
            slot: 3,
            queue: 1,
            fingerprint: fp_b.to_string(),
            mode: KeyMode::Aes256Xts,
            data_unit_size: 512,
            dun_bytes: 4,
            replaced: Some(fp_a.to_string()),
        })
    );
    assert_eq!(
        lines[4].event,
        TraceEvent::Evict(EvictEvent {
            slot: 3,
            queue: Some(1),
            cause: EvictCause::Guest,
            fingerprint: Some(fp_b.to_string()),
        })
    );
    let rejects: Vec<_> = lines
        .iter()
        .filter_map(|l| match &l.event {
            TraceEvent::Reject(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rejects[0].request.as_deref(), Some("CRYPTO_IN"));
    assert_eq!(rejects[0].sector, Some(8));
    assert_eq!(rejects[0].kind, "crypto-not-negotiated");
    assert_eq!(
        (rejects[1].request.as_deref(), rejects[1].sector),
        (None, None)
    );
    assert_eq!(rejects[1].kind, "short-header");
    assert_eq!(rejects[2].kind, reject_kind::SLOT_EMPTY);
    assert_eq!(rejects[2].status, RejectStatus::IoErr);
    assert_eq!(rejects[2].queue, 2);
    assert_eq!(
        lines[9].event,
        TraceEvent::Evict(EvictEvent {
            slot: 5,
            queue: None,
            cause: EvictCause::Reset,
            fingerprint: Some(fp_a.to_string()),
        })
    );

    // The stats, through the file format, agree with the trace.
    let file = StatsFile {
        device: Default::default(),
        stats: engine.counters(),
    };
    let stats = StatsFile::from_json(&file.to_json().expect("serializes"))
        .expect("parses")
        .stats;
    assert_eq!(stats.keyslots.programmed, 3);
    assert_eq!(stats.keyslots.evicted, 1);
    assert_eq!(stats.keyslots.evicted_by_reset, 1);
    assert_eq!(stats.keyslots.uses_per_slot.len(), 32);
    assert_eq!(stats.queries, 2);
    assert_eq!(stats.rejected.total, rejects.len() as u64);
    for reject in &rejects {
        assert_eq!(stats.rejected.of_kind(&reject.kind), 1, "{}", reject.kind);
    }
}
