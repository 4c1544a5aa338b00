//! What the benches share: distinct valid PNGs cheaply, by tagging the same pixels, and a
//! process's CPU time.
// Each bench is a crate of its own and uses only some of these.
#![allow(dead_code)]

pub mod intake;
pub mod lifecycle;

/// `png` with a tEXt chunk carrying `text` put right after IHDR: another text, other bytes, the
/// same pixels (no re-encoding per file).
pub fn with_text(png: &[u8], text: &str) -> Vec<u8> {
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&(text.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(text.as_bytes());
    let crc = crc32(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    let mut bytes = png.to_vec();
    // 8 bytes of signature, then IHDR: 4 length, 4 type, 13 data, 4 CRC.
    bytes.splice(33..33, chunk);
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// User and system CPU seconds of process `pid` so far ("self" for the bench's own), from
/// `/proc/PID/stat`.
pub fn cpu_seconds(pid: &str) -> f64 {
    const CLK_TCK: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / CLK_TCK
}

/// User and system CPU seconds this process has spent so far, to the microsecond (`getrusage`),
/// where [`cpu_seconds`] counts in ticks of 10 ms: for phases that last a fraction of a second.
pub fn own_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// User and system CPU seconds the calling thread has spent so far, to the microsecond.
pub fn thread_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: `rusage` is plain data, and getrusage only writes into it.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
