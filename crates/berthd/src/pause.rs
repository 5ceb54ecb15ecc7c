//! `berthd pause`: the init of a pod's shared PID namespace. It unshares the PID namespace,
//! forks its first process (PID 1 there), prints that process's pid and exits; the child,
//! orphaned to the system's init, reaps whatever ends in its namespace until it is killed.
//! It runs before any thread exists, so forking is safe.

use anyhow::{bail, Result};

extern "C" fn on_child(_: libc::c_int) {}

pub fn run() -> Result<()> {
    // SAFETY: plain syscalls in a single-threaded process (no runtime has started); the
    // child only calls async-signal-safe functions (setsid, signal, waitpid, pause).
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            bail!(
                "unshare the PID namespace: {}",
                std::io::Error::last_os_error()
            );
        }
        match libc::fork() {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                libc::setsid();
                libc::signal(libc::SIGCHLD, on_child as *const () as libc::sighandler_t);
                for fd in 0..3 {
                    libc::close(fd);
                }
                loop {
                    while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
                    libc::pause();
                }
            }
            child => {
                println!("{child}");
                Ok(())
            }
        }
    }
}
