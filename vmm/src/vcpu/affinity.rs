//! Pinning a vCPU thread to a host CPU (`--cpu-affinity`).

/// A vCPU thread could not be pinned.
#[derive(Debug, thiserror::Error)]
#[error("cannot pin vCPU {vcpu} to host CPU {cpu}: {source}")]
pub struct PinError {
    pub vcpu: usize,
    pub cpu: usize,
    pub source: std::io::Error,
}

/// Pin thread `thread` (vCPU `vcpu`) to host CPU `cpu`.
pub fn pin(thread: libc::pthread_t, vcpu: usize, cpu: usize) -> Result<(), PinError> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(PinError {
            vcpu,
            cpu,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: cpu_set_t is plain data; zeroed is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), the size of `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `thread` is a live thread of this process (its JoinHandle is held by the caller);
    // the pointer and size describe `set`.
    let rc = unsafe { libc::pthread_setaffinity_np(thread, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(PinError {
            vcpu,
            cpu,
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}
