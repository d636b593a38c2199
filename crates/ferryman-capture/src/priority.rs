//! The threads that write each exchange's files and index row yield the CPU
//! to the traffic: on a saturated machine the proxy keeps its speed and
//! capture falls behind (and drops, counted), instead of both slowing down.
//! Large bodies stream from the capture runtime at the traffic's priority:
//! one fast upload would otherwise outrun its own capture.

/// Lowers the calling thread's priority to `nice` (0 leaves it as is). A
/// refusal only costs speed, so it is logged, not fatal.
pub(crate) fn yield_to_traffic(nice: u8) {
    if nice == 0 {
        return;
    }
    // On Linux the nice value belongs to the thread named by its id.
    let thread = unsafe { libc::gettid() };
    let set =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, i32::from(nice)) };
    if set != 0 {
        tracing::warn!(
            nice,
            error = %std::io::Error::last_os_error(),
            "could not lower the priority of a capture thread"
        );
    }
}
