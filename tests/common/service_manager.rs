//! The service manager's side of the notify protocol (`NOTIFY_SOCKET`), for the tests that check
//! what the daemon tells systemd. Included with `#[path]` by the tests that need it.

#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The service manager's end of NOTIFY_SOCKET: every datagram, with when it came.
pub struct Manager {
    path: PathBuf,
    heard: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Manager {
    pub fn listen(dir: &Path) -> Manager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let heard: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = Arc::clone(&heard);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            // Ends when the test (and its folder) is gone (the socket errors), or after three
            // minutes.
            for _ in 0..(180 * 10) {
                match socket.recv(&mut buf) {
                    Ok(n) => sink
                        .lock()
                        .unwrap()
                        .push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into())),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        Manager { path, heard }
    }

    pub fn socket(&self) -> &str {
        self.path.to_str().unwrap()
    }

    pub fn messages(&self) -> Vec<(Instant, String)> {
        self.heard.lock().unwrap().clone()
    }

    /// Messages with a line `key=…`, with the value.
    pub fn with(&self, key: &str) -> Vec<(Instant, String, String)> {
        self.messages()
            .into_iter()
            .filter_map(|(at, m)| {
                let value = m
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{key}=")))?
                    .to_string();
                Some((at, value, m))
            })
            .collect()
    }

    pub fn wait_for(&self, what: &str, done: impl Fn(&Manager) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; heard: {:#?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pings_between(&self, from: Instant, to: Instant) -> usize {
        self.with("WATCHDOG")
            .iter()
            .filter(|(at, v, _)| v == "1" && *at >= from && *at < to)
            .count()
    }

    /// The last STATUS= the daemon sent (empty before the first).
    pub fn last_status(&self) -> String {
        self.with("STATUS")
            .last()
            .map(|(_, status, _)| status.clone())
            .unwrap_or_default()
    }
}
