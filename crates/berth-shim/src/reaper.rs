//! The shim is the child subreaper of its containers: every child that ends (container
//! processes, runtime invocations, orphans re-parented to the shim) is reaped here and its
//! status handed to whoever registered its pid. A pid can end before it is registered (an
//! exec that is over before the runtime has reported its pid), so unclaimed exits are kept,
//! a bounded number of them, for the registration to find.

use std::{
    collections::{HashMap, VecDeque},
    io,
    process::Command,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rustix::process::{WaitOptions, WaitStatus};
use tokio::sync::oneshot;

/// How many exits of pids nobody registered are remembered.
const UNCLAIMED_KEPT: usize = 256;

/// How a process ended: its exit code, or 128 + the signal that killed it, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub at: SystemTime,
}

impl Exit {
    fn from_status(status: WaitStatus) -> Self {
        let code = if let Some(signal) = status.terminating_signal() {
            128 + signal
        } else {
            status.exit_status().unwrap_or(255)
        };
        Exit {
            code,
            at: SystemTime::now(),
        }
    }
}

#[derive(Default, Debug)]
struct Book {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(i32, Exit)>,
}

/// Where reaped exits go.
#[derive(Default, Debug)]
pub struct Reaper {
    book: Mutex<Book>,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The exit of `pid`, when it comes (or came already and was kept).
    pub fn register(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = book.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, exit)) = book.unclaimed.remove(i) {
                let _ = tx.send(exit);
                return rx;
            }
        }
        book.waiting.insert(pid, tx);
        rx
    }

    /// Spawns `command` and registers its pid before the reaper can see it end, so its
    /// status is never taken by the collective `wait`.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(u32, oneshot::Receiver<Exit>)> {
        let (tx, rx) = oneshot::channel();
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let child = command.spawn()?;
        book.waiting.insert(child.id() as i32, tx);
        Ok((child.id(), rx))
    }

    /// Runs `fork`, which starts a child and returns its pid, with the book held: the child's
    /// exit is then taken as expected (nobody waits for it) rather than kept as unclaimed.
    pub fn track(&self, fork: impl FnOnce() -> Option<i32>) {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = fork() {
            book.waiting.insert(pid, oneshot::channel().0);
        }
    }

    /// How many pids are waited for, and how many exits are kept unclaimed.
    #[cfg(test)]
    pub fn tracked_and_unclaimed(&self) -> (usize, usize) {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        (book.waiting.len(), book.unclaimed.len())
    }

    /// Reaps every child that has ended.
    pub fn reap(&self) {
        loop {
            let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let pid = pid.as_raw_nonzero().get();
                    let exit = Exit::from_status(status);
                    match book.waiting.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(exit);
                        }
                        None => {
                            if book.unclaimed.len() == UNCLAIMED_KEPT {
                                book.unclaimed.pop_front();
                            }
                            book.unclaimed.push_back((pid, exit));
                        }
                    }
                }
                Ok(None) => return,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return, // ECHILD: no children at all
            }
        }
    }

    /// Reaps on every SIGCHLD until the process ends. The signal stream must exist before
    /// the first child is spawned, which is why it is passed in.
    pub async fn run(self: Arc<Self>, mut sigchld: tokio::signal::unix::Signal) {
        loop {
            self.reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wait` takes any child of the test process, so the tests that spawn take turns.
    static CHILDREN: Mutex<()> = Mutex::new(());

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by the reaper under test
    fn an_exit_before_registration_is_kept() {
        let _turn = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let reaper = Reaper::new();
        let child = Command::new("/bin/sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Wait for it to be a zombie, then reap before anyone registered.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        reaper.reap();
        let exit = reaper.register(pid).try_recv().unwrap();
        assert_eq!(exit.code, 7);
    }

    #[test]
    fn signalled_processes_report_128_plus_the_signal() {
        let _turn = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        let reaper = Reaper::new();
        let (pid, mut rx) = reaper
            .spawn(Command::new("/bin/sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        assert!(pid > 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            reaper.reap();
            if let Ok(exit) = rx.try_recv() {
                assert_eq!(exit.code, 137);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no exit reaped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
