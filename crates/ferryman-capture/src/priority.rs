//! The threads that write each exchange's files and index row yield the CPU
//! to the traffic: on a saturated machine the proxy keeps its speed and
//! capture falls behind (and drops, counted), instead of both slowing down.
//! Large bodies stream from the capture runtime at the traffic's priority:
//! one fast upload would otherwise outrun its own capture.

/// The most a nice value goes.
const LOWEST: i32 = 19;

/// Lowers the calling thread's priority by `steps` nice values below the
/// process's (0 leaves it as is), so ferryman started under `nice` keeps
/// the same order. A refusal only costs speed, so it is logged, not fatal.
pub(crate) fn yield_to_traffic(steps: u8) {
    if steps == 0 {
        return;
    }
    // On Linux the nice value belongs to the thread named by its id; a new
    // thread starts with its creator's. These calls only read or change the
    // calling thread's scheduling.
    let thread = unsafe { libc::gettid() } as libc::id_t;
    // getpriority can return -1 as a value: errno tells an error apart.
    unsafe { *libc::__errno_location() = 0 };
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, thread) };
    let read = std::io::Error::last_os_error();
    let target = (current + i32::from(steps)).min(LOWEST);
    let set = if current == -1 && read.raw_os_error().unwrap_or(0) != 0 {
        Err(read)
    } else if unsafe { libc::setpriority(libc::PRIO_PROCESS, thread, target) } != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    if let Err(error) = set {
        tracing::warn!(steps, %error, "could not lower the priority of a capture thread");
    }
}
