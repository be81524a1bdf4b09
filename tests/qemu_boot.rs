//! QEMU interop without a kernel: stock QEMU boots SeaBIOS from a disk that
//! `icelab serve` exports over vhost-user-blk.
//!
//! Sector 0 of the image is a hand-assembled boot sector. SeaBIOS reads it
//! through the device (a virtio-blk IN request), runs it, and the boot
//! sector then
//! 1. prints a marker stored in sector 0 on the serial port (COM1),
//! 2. reads eight sectors at LBA 2048 with int 13h AH=42h, which SeaBIOS
//!    serves with a virtio-blk IN request to the device,
//! 3. prints the markers stored at the start of the first and the last of
//!    those sectors and a 16-bit checksum of all 4 KiB,
//! 4. exits QEMU through isa-debug-exit, with a status that tells success
//!    from a failed disk read.
//!
//! The test checks the serial output, QEMU's exit status, that the image
//! is unchanged, and that `icelab serve` exits with status 0 once QEMU has
//! disconnected. Stock QEMU does not know the inline-encryption feature
//! bit and drops it, so this exercises only the plain virtio-blk path and
//! the vhost-user plumbing (memory table, vrings, config space).
//!
//! Needs `qemu-system-x86_64` and SeaBIOS (`scripts/install-deps`); fails,
//! never skips, when they are missing.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Device, Process, SECTOR_SIZE};

/// The QEMU binary this test runs.
const QEMU: &str = "qemu-system-x86_64";

/// Hard limit for QEMU from start to exit. The boot itself takes well
/// under a second under TCG; the margin is for a loaded shared machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Size of the test image (sparse).
const IMAGE_SIZE: u64 = 64 << 20;

// --- the boot sector ------------------------------------------------------
//
// Memory map in real mode (segment 0 everywhere):
//   0x7c00  the boot sector, as loaded by the BIOS; the stack grows down
//           from here
//   0x8000  the buffer the boot sector reads DATA_SECTORS sectors into

/// Where the BIOS loads sector 0 and jumps to.
const LOAD_ADDR: u16 = 0x7c00;
/// Where the boot sector reads the data sectors to.
const BUFFER_ADDR: u16 = 0x8000;
/// First sector the boot sector reads (1 MiB into the disk).
const DATA_LBA: u64 = 2048;
/// Sectors it reads: one 4 KiB page.
const DATA_SECTORS: u16 = 8;
/// 16-bit words the boot sector sums: the whole buffer.
const CHECKSUM_WORDS: u16 = DATA_SECTORS * SECTOR_SIZE as u16 / 2;
/// Address of the last data sector in the buffer.
const LAST_SECTOR_ADDR: u16 = BUFFER_ADDR + (DATA_SECTORS - 1) * SECTOR_SIZE as u16;

// Offsets in sector 0 of the boot sector's data (after the code).
/// int 13h extensions disk address packet.
const DAP_OFFSET: u16 = 0x100;
/// Marker printed from sector 0.
const MSG_SECTOR0_OFFSET: u16 = 0x110;
/// Text before the checksum.
const MSG_CHECKSUM_OFFSET: u16 = 0x130;
/// Text before the int 13h status on a failed read.
const MSG_ERROR_OFFSET: u16 = 0x150;
/// End of line.
const MSG_CRLF_OFFSET: u16 = 0x180;

const DAP_ADDR: u16 = LOAD_ADDR + DAP_OFFSET;
const MSG_SECTOR0_ADDR: u16 = LOAD_ADDR + MSG_SECTOR0_OFFSET;
const MSG_CHECKSUM_ADDR: u16 = LOAD_ADDR + MSG_CHECKSUM_OFFSET;
const MSG_ERROR_ADDR: u16 = LOAD_ADDR + MSG_ERROR_OFFSET;
const MSG_CRLF_ADDR: u16 = LOAD_ADDR + MSG_CRLF_OFFSET;

/// Printed from sector 0 (the boot sector itself).
const MARKER_SECTOR0: &str = "ICELAB-BOOT sector 0 OK";
/// Printed before the 4 hex digits of the checksum.
const MARKER_CHECKSUM: &str = "ICELAB-BOOT checksum 0x";
/// Printed before the 2 hex digits of int 13h's status when the read fails.
const MARKER_READ_ERROR: &str = "ICELAB-BOOT read error, int 13h status 0x";

/// Value the boot sector writes to isa-debug-exit after a good read.
const EXIT_VALUE_OK: u8 = 0x2a;
/// Value it writes when int 13h reports an error.
const EXIT_VALUE_READ_ERROR: u8 = 0x01;
/// isa-debug-exit I/O port.
const DEBUG_EXIT_PORT: u8 = 0xf4;

/// QEMU's exit status after the guest writes `value` to isa-debug-exit.
const fn debug_exit_status(value: u8) -> i32 {
    ((value as i32) << 1) | 1
}

const fn lo(word: u16) -> u8 {
    word.to_le_bytes()[0]
}

const fn hi(word: u16) -> u8 {
    word.to_le_bytes()[1]
}

/// The boot sector's code, 16-bit real mode, loaded at 0000:7c00.
///
/// Hand-assembled (no assembler needed to run the test). The left column
/// is the address; rel8/rel16 operands are `target - address of the next
/// instruction`. Checked with `objdump -D -b binary -m i8086
/// --adjust-vma=0x7c00`. Registers: `print` and `print_hex8` clobber AX
/// and DX; SI is the string pointer.
#[rustfmt::skip]
const BOOT_CODE: [u8; 0x9b] = [
    // 7c00 start:
    0xfa,                                   // cli
    0x31, 0xc0,                             // xor  ax, ax
    0x8e, 0xd8,                             // mov  ds, ax
    0x8e, 0xc0,                             // mov  es, ax
    0x8e, 0xd0,                             // mov  ss, ax
    0xbc, lo(LOAD_ADDR), hi(LOAD_ADDR),     // mov  sp, 0x7c00
    0xfb,                                   // sti
    0xfc,                                   // cld
    // 7c0e: the BIOS passes the boot drive in DL; print clobbers DX.
    0x52,                                   // push dx
    0xbe, lo(MSG_SECTOR0_ADDR), hi(MSG_SECTOR0_ADDR), // mov si, MSG_SECTOR0
    0xe8, 0x58, 0x00,                       // call print (7c6d)
    0x5a,                                   // pop  dx
    // 7c16: extended read: AH=42h, DL=drive, DS:SI=disk address packet
    0xbe, lo(DAP_ADDR), hi(DAP_ADDR),       // mov  si, DAP
    0xb4, 0x42,                             // mov  ah, 0x42
    0xcd, 0x13,                             // int  0x13
    0x72, 0x37,                             // jc   read_error (7c56)
    // 7c1f: markers at the start of the first and the last sector read
    0xbe, lo(BUFFER_ADDR), hi(BUFFER_ADDR), // mov  si, BUFFER
    0xe8, 0x48, 0x00,                       // call print (7c6d)
    0xbe, lo(LAST_SECTOR_ADDR), hi(LAST_SECTOR_ADDR), // mov si, LAST_SECTOR
    0xe8, 0x42, 0x00,                       // call print (7c6d)
    0xbe, lo(MSG_CHECKSUM_ADDR), hi(MSG_CHECKSUM_ADDR), // mov si, MSG_CHECKSUM
    0xe8, 0x3c, 0x00,                       // call print (7c6d)
    // 7c31: BX = wrapping sum of the buffer's little-endian words
    0x31, 0xdb,                             // xor  bx, bx
    0xbe, lo(BUFFER_ADDR), hi(BUFFER_ADDR), // mov  si, BUFFER
    0xb9, lo(CHECKSUM_WORDS), hi(CHECKSUM_WORDS), // mov cx, 0x0800
    // 7c39 sum:
    0xad,                                   // lodsw
    0x01, 0xc3,                             // add  bx, ax
    0xe2, 0xfb,                             // loop sum (7c39)
    0x88, 0xf8,                             // mov  al, bh
    0xe8, 0x35, 0x00,                       // call print_hex8 (7c78)
    0x88, 0xd8,                             // mov  al, bl
    0xe8, 0x30, 0x00,                       // call print_hex8 (7c78)
    0xbe, lo(MSG_CRLF_ADDR), hi(MSG_CRLF_ADDR), // mov si, MSG_CRLF
    0xe8, 0x1f, 0x00,                       // call print (7c6d)
    0xb0, EXIT_VALUE_OK,                    // mov  al, EXIT_VALUE_OK
    // 7c50 exit: (AL = exit value)
    0xe6, DEBUG_EXIT_PORT,                  // out  0xf4, al
    0xfa,                                   // cli
    // 7c53 hang: (only if isa-debug-exit is absent)
    0xf4,                                   // hlt
    0xeb, 0xfd,                             // jmp  hang (7c53)
    // 7c56 read_error: (AH = int 13h status)
    0x50,                                   // push ax
    0xbe, lo(MSG_ERROR_ADDR), hi(MSG_ERROR_ADDR), // mov si, MSG_ERROR
    0xe8, 0x10, 0x00,                       // call print (7c6d)
    0x58,                                   // pop  ax
    0x88, 0xe0,                             // mov  al, ah
    0xe8, 0x15, 0x00,                       // call print_hex8 (7c78)
    0xbe, lo(MSG_CRLF_ADDR), hi(MSG_CRLF_ADDR), // mov si, MSG_CRLF
    0xe8, 0x04, 0x00,                       // call print (7c6d)
    0xb0, EXIT_VALUE_READ_ERROR,            // mov  al, EXIT_VALUE_READ_ERROR
    0xeb, 0xe3,                             // jmp  exit (7c50)
    // 7c6d print: (DS:SI = NUL-terminated string)
    0xac,                                   // lodsb
    0x84, 0xc0,                             // test al, al
    0x74, 0x05,                             // jz   .done (7c77)
    0xe8, 0x15, 0x00,                       // call putc (7c8a)
    0xeb, 0xf6,                             // jmp  print (7c6d)
    // 7c77 .done:
    0xc3,                                   // ret
    // 7c78 print_hex8: (AL = byte, printed as two hex digits)
    0x50,                                   // push ax
    0xc0, 0xe8, 0x04,                       // shr  al, 4
    0xe8, 0x03, 0x00,                       // call nibble (7c82)
    0x58,                                   // pop  ax
    0x24, 0x0f,                             // and  al, 0x0f
    // 7c82 nibble: (AL = 0..15; falls through to putc)
    0x04, b'0',                             // add  al, '0'
    0x3c, b'9',                             // cmp  al, '9'
    0x76, 0x02,                             // jbe  putc (7c8a)
    0x04, b'a' - b'9' - 1,                  // add  al, 'a' - '9' - 1
    // 7c8a putc: (AL = character) polled output on COM1
    0x88, 0xc4,                             // mov  ah, al
    0xba, 0xfd, 0x03,                       // mov  dx, 0x3fd (line status)
    // 7c8f .wait:
    0xec,                                   // in   al, dx
    0xa8, 0x20,                             // test al, 0x20 (transmitter empty)
    0x74, 0xfb,                             // jz   .wait (7c8f)
    0x88, 0xe0,                             // mov  al, ah
    0xba, 0xf8, 0x03,                       // mov  dx, 0x3f8 (data)
    0xee,                                   // out  dx, al
    0xc3,                                   // ret
];

/// Copies `bytes` into `sector` at `offset`, checking that it ends before
/// `limit` (the next item's offset).
fn place(sector: &mut [u8], offset: u16, limit: u16, bytes: &[u8]) {
    let (start, end) = (usize::from(offset), usize::from(offset) + bytes.len());
    assert!(
        end <= usize::from(limit),
        "boot sector layout: {} bytes at {offset:#x} overrun {limit:#x}",
        bytes.len()
    );
    sector[start..end].copy_from_slice(bytes);
}

/// A NUL-terminated string as the boot sector prints it.
fn asciz(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Sector 0: code, disk address packet, strings, boot signature.
fn boot_sector() -> [u8; SECTOR_SIZE as usize] {
    let mut sector = [0; SECTOR_SIZE as usize];
    place(&mut sector, 0, DAP_OFFSET, &BOOT_CODE);

    // Disk address packet (int 13h extensions): size, reserved, sector
    // count, buffer offset:segment, starting LBA.
    let mut dap = vec![0x10, 0];
    dap.extend_from_slice(&DATA_SECTORS.to_le_bytes());
    dap.extend_from_slice(&BUFFER_ADDR.to_le_bytes());
    dap.extend_from_slice(&0u16.to_le_bytes());
    dap.extend_from_slice(&DATA_LBA.to_le_bytes());
    place(&mut sector, DAP_OFFSET, MSG_SECTOR0_OFFSET, &dap);

    let line = |text: &str| asciz(&format!("{text}\r\n"));
    place(
        &mut sector,
        MSG_SECTOR0_OFFSET,
        MSG_CHECKSUM_OFFSET,
        &line(MARKER_SECTOR0),
    );
    place(
        &mut sector,
        MSG_CHECKSUM_OFFSET,
        MSG_ERROR_OFFSET,
        &asciz(MARKER_CHECKSUM),
    );
    place(
        &mut sector,
        MSG_ERROR_OFFSET,
        MSG_CRLF_OFFSET,
        &asciz(MARKER_READ_ERROR),
    );
    place(&mut sector, MSG_CRLF_OFFSET, 510, b"\r\n\0");
    place(&mut sector, 510, 512, &[0x55, 0xaa]);
    sector
}

/// The marker at the start of data sector `lba`.
fn data_marker(lba: u64) -> String {
    format!("ICELAB-BOOT LBA {lba} OK")
}

/// The DATA_SECTORS sectors at DATA_LBA: pseudo-random bytes, with a
/// NUL-terminated marker line at the start of the first and last sector.
fn data_sectors() -> Vec<u8> {
    let mut data = support::pattern(DATA_LBA, usize::from(DATA_SECTORS) * SECTOR_SIZE as usize);
    let last = DATA_LBA + u64::from(DATA_SECTORS) - 1;
    for lba in [DATA_LBA, last] {
        let start = ((lba - DATA_LBA) * SECTOR_SIZE) as usize;
        let marker = asciz(&format!("{}\r\n", data_marker(lba)));
        data[start..start + marker.len()].copy_from_slice(&marker);
    }
    data
}

/// The boot sector's checksum: the wrapping sum of little-endian words.
fn checksum(data: &[u8]) -> u16 {
    data.chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .fold(0, u16::wrapping_add)
}

// --- tests ------------------------------------------------------------------

#[test]
fn boot_sector_layout() {
    let sector = boot_sector();
    assert_eq!(&sector[510..], &[0x55, 0xaa], "boot signature");
    // The code's absolute addresses point at what boot_sector() placed.
    let at = |addr: u16| &sector[usize::from(addr - LOAD_ADDR)..];
    assert!(at(MSG_SECTOR0_ADDR).starts_with(MARKER_SECTOR0.as_bytes()));
    assert!(at(MSG_CHECKSUM_ADDR).starts_with(&asciz(MARKER_CHECKSUM)));
    assert!(at(MSG_ERROR_ADDR).starts_with(&asciz(MARKER_READ_ERROR)));
    assert!(at(MSG_CRLF_ADDR).starts_with(b"\r\n\0"));
    assert_eq!(at(DAP_ADDR)[0], 0x10, "disk address packet size");
    assert_eq!(&at(DAP_ADDR)[8..16], &DATA_LBA.to_le_bytes());
    // The data sectors end below 0x10000 (one segment) and above the
    // boot sector.
    let buffer_end = u32::from(BUFFER_ADDR) + u32::from(DATA_SECTORS) * SECTOR_SIZE as u32;
    assert!(u32::from(BUFFER_ADDR) >= u32::from(LOAD_ADDR) + 512 && buffer_end <= 0x1_0000);
    // The checksum loop covers exactly the buffer: CX = words.
    assert_eq!(
        u32::from(u16::from_le_bytes([BOOT_CODE[0x37], BOOT_CODE[0x38]])) * 2,
        buffer_end - u32::from(BUFFER_ADDR)
    );
    assert_eq!(debug_exit_status(EXIT_VALUE_OK), 85);
    assert_eq!(checksum(&[0x01, 0x02, 0xff, 0xff]), 0x0200);
}

/// Writes the boot sector and the data sectors into a new image at `path`;
/// returns the data sectors.
fn write_image(path: &Path) -> Vec<u8> {
    let data = data_sectors();
    support::create_image(path, IMAGE_SIZE);
    support::write_at(path, 0, &boot_sector());
    support::write_at(path, DATA_LBA * SECTOR_SIZE, &data);
    data
}

/// Checks that the image at `path` still holds what [`write_image`] wrote
/// (SeaBIOS and the boot sector only read).
fn assert_image_unchanged(path: &Path, data: &[u8]) {
    assert!(
        support::read_at(path, 0, SECTOR_SIZE as usize) == boot_sector(),
        "sector 0 changed on the image"
    );
    assert!(
        support::read_at(path, DATA_LBA * SECTOR_SIZE, data.len()) == data,
        "the data sectors changed on the image"
    );
}

/// Boots QEMU (SeaBIOS) from the disk that `disk_args` attach, within
/// [`BOOT_TIMEOUT`], and checks the serial output and the exit status.
/// `data` is what the data sectors hold; `other_logs` adds the logs of
/// other processes (the device) to failure messages.
fn boot_and_check(dir: &Path, disk_args: &[String], data: &[u8], other_logs: &dyn Fn() -> String) {
    let qemu = support::require_tool(QEMU);
    let serial_log = dir.join("serial.log");
    let mut command = Command::new(&qemu);
    command
        .args(["-machine", "pc,accel=tcg", "-m", "128"])
        .args(disk_args)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()));
    let mut vm = Process::spawn("qemu", command, dir);

    let status = vm.wait_timeout(BOOT_TIMEOUT);
    if status.is_none() {
        vm.kill();
    }
    let serial = String::from_utf8_lossy(&fs::read(&serial_log).unwrap_or_default()).into_owned();
    let report = |what: &str| {
        format!(
            "{what}\n--- serial console ({}) ---\n{}\n{}{}\
             (set ICELAB_KEEP_TEST_DIRS=1 to keep the files above)",
            serial_log.display(),
            if serial.is_empty() {
                "(empty)"
            } else {
                &serial
            },
            vm.logs(),
            other_logs()
        )
    };
    let Some(status) = status else {
        panic!(
            "{}",
            report(&format!(
                "QEMU did not exit within {BOOT_TIMEOUT:?}: the boot sector never reached \
                 isa-debug-exit; killed QEMU"
            ))
        );
    };
    if serial.contains(MARKER_READ_ERROR) {
        panic!("{}", report("int 13h failed to read the data sectors"));
    }
    let expected_status = debug_exit_status(EXIT_VALUE_OK);
    assert_eq!(
        status.code(),
        Some(expected_status),
        "{}",
        report(&format!(
            "QEMU exited with {status}; the boot sector makes it exit with {expected_status} \
             after a good read ({} after a failed read)",
            debug_exit_status(EXIT_VALUE_READ_ERROR)
        ))
    );

    let last_lba = DATA_LBA + u64::from(DATA_SECTORS) - 1;
    let expected_lines = [
        MARKER_SECTOR0.to_owned(),
        data_marker(DATA_LBA),
        data_marker(last_lba),
        format!("{MARKER_CHECKSUM}{:04x}", checksum(data)),
    ];
    let lines: Vec<&str> = serial.lines().map(str::trim_end).collect();
    for expected in &expected_lines {
        assert!(
            lines.contains(&expected.as_str()),
            "{}",
            report(&format!("the serial output lacks the line {expected:?}"))
        );
    }
}

/// Control: QEMU's own virtio-blk on the raw image. When this passes and
/// the vhost-user test fails, look at the device, not at the boot sector.
#[test]
fn seabios_boots_raw_image_with_qemu_virtio_blk() {
    let dir = support::temp_dir("qemu-boot-raw");
    let image = dir.path().join("disk.img");
    let data = write_image(&image);
    let drive = format!("file={},format=raw,if=virtio", image.display());
    boot_and_check(dir.path(), &["-drive".into(), drive], &data, &String::new);
    assert_image_unchanged(&image, &data);
}

#[test]
fn seabios_boots_from_icelab_serve() {
    // Fail early and clearly when QEMU is missing, before starting the device.
    support::require_tool(QEMU);
    let dir = support::temp_dir("qemu-boot-vhost-user");
    let image = dir.path().join("disk.img");
    let socket = dir.path().join("vhost-user-blk.sock");
    let data = write_image(&image);

    let started = Instant::now();
    let mut device = Device::builder(&image, &socket)
        .stats(dir.path().join("stats.json"))
        .spawn();
    let device_ready = started.elapsed();

    let disk_args = [
        // vhost-user needs guest memory that the device can map: a shared memfd.
        "-object".to_owned(),
        "memory-backend-memfd,id=mem,size=128M,share=on".to_owned(),
        "-numa".to_owned(),
        "node,memdev=mem".to_owned(),
        "-chardev".to_owned(),
        format!("socket,id=vu0,path={}", socket.display()),
        "-device".to_owned(),
        "vhost-user-blk-pci,chardev=vu0,bootindex=1".to_owned(),
    ];
    boot_and_check(dir.path(), &disk_args, &data, &|| device.logs());
    let booted = started.elapsed();

    // QEMU has exited, so its end of the vhost-user socket is closed: the
    // device must notice and exit with status 0.
    device.assert_clean_exit("");
    assert_image_unchanged(&image, &data);

    // The device's own count (written at exit) agrees: at least sector 0
    // and the data sectors were read, nothing was written or rejected.
    let stats = device.stats();
    let read_bytes = support::stat_u64(&stats, "stats.plain_in.bytes");
    let minimum = SECTOR_SIZE + data.len() as u64;
    assert!(
        support::stat_u64(&stats, "stats.plain_in.requests") >= 2 && read_bytes >= minimum,
        "the device counted {read_bytes} bytes read, expected at least {minimum}\n{stats:#}"
    );
    for counter in [
        "stats.plain_out.requests",
        "stats.crypto_in.requests",
        "stats.crypto_out.requests",
        "stats.rejected.total",
    ] {
        assert_eq!(
            support::stat_u64(&stats, counter),
            0,
            "{counter}\n{stats:#}"
        );
    }

    eprintln!(
        "icelab serve ready after {device_ready:?}; QEMU booted and exited after {booted:?}; \
         icelab serve exited after {:?}",
        started.elapsed()
    );
}
