//! What one KVM exit means: port and MMIO accesses go to the buses, the rest says whether the
//! vCPU goes on, was kicked, or ends the VM. A free function, so it is tested with fake exits.

use crate::host::exit::ExitReason;
use kvm_ioctls::VcpuExit;
use plainvm_devices::Bus;

/// The outcome of one exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Emulation {
    /// Handled: run the guest again.
    Continue,
    /// KVM_RUN was interrupted by a kick (pause or stop): clear `immediate_exit` and go on.
    Kicked,
    /// The guest ended the VM (power-off, halt).
    Stop(ExitReason),
    /// The guest triple-faulted.
    Shutdown,
    /// KVM could not run an instruction: see `emulation::handle_internal_error`.
    InternalError,
    /// Anything else ends the VM with this message.
    Crash(String),
}

/// Route `exit` to the devices on `pio` and `mmio`, and say what the vCPU does next.
pub fn dispatch(exit: Result<VcpuExit, kvm_ioctls::Error>, pio: &Bus, mmio: &Bus) -> Emulation {
    match exit {
        Ok(VcpuExit::IoOut(port, data)) => {
            pio.write(u64::from(port), data);
        }
        Ok(VcpuExit::IoIn(port, data)) => {
            pio.read(u64::from(port), data);
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            mmio.read(addr, data);
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            mmio.write(addr, data);
        }
        Ok(VcpuExit::SystemEvent(..)) | Ok(VcpuExit::Hlt) => {
            return Emulation::Stop(ExitReason::PowerOff)
        }
        Ok(VcpuExit::Shutdown) => return Emulation::Shutdown,
        Ok(VcpuExit::InternalError) => return Emulation::InternalError,
        Ok(VcpuExit::FailEntry(reason, cpu)) => {
            return Emulation::Crash(format!(
                "KVM could not enter the guest (hardware reason {reason:#x} on host CPU {cpu})"
            ))
        }
        Ok(VcpuExit::Intr) => {}
        Ok(other) => return Emulation::Crash(format!("unexpected KVM exit {other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            return Emulation::Kicked
        }
        Err(e) => return Emulation::Crash(format!("KVM_RUN failed: {e}")),
    }
    Emulation::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use plainvm_devices::BusDevice;
    use std::sync::{Arc, Mutex};

    /// Remembers the last write and answers reads with 0x5a.
    #[derive(Default)]
    struct Probe {
        written: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.written.push((offset, data.to_vec()));
        }
    }

    fn buses() -> (Bus, Bus, Arc<Mutex<Probe>>, Arc<Mutex<Probe>>) {
        let (p, m) = (
            Arc::<Mutex<Probe>>::default(),
            Arc::<Mutex<Probe>>::default(),
        );
        let mut pio = Bus::new();
        pio.insert(p.clone(), 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(m.clone(), 0xd000_0000, 0x1000).unwrap();
        (pio, mmio, p, m)
    }

    #[test]
    fn port_and_mmio_accesses_reach_their_devices() {
        let (pio, mmio, p, m) = buses();
        assert_eq!(
            dispatch(Ok(VcpuExit::IoOut(0x3f9, &[7])), &pio, &mmio),
            Emulation::Continue
        );
        assert_eq!(p.lock().unwrap().written, [(1, vec![7])]);
        let mut data = [0u8; 4];
        dispatch(Ok(VcpuExit::MmioRead(0xd000_0010, &mut data)), &pio, &mmio);
        assert_eq!(data, [0x5a; 4]);
        dispatch(Ok(VcpuExit::MmioWrite(0xd000_0070, &[1, 2])), &pio, &mmio);
        assert_eq!(m.lock().unwrap().written, [(0x70, vec![1, 2])]);
        let mut data = [0u8; 1];
        dispatch(Ok(VcpuExit::IoIn(0x3fa, &mut data)), &pio, &mmio);
        assert_eq!(data, [0x5a]);
    }

    #[test]
    fn accesses_nothing_owns_are_ignored() {
        let (pio, mmio, p, m) = buses();
        let mut data = [0xffu8; 2];
        assert_eq!(
            dispatch(Ok(VcpuExit::IoIn(0x1234, &mut data)), &pio, &mmio),
            Emulation::Continue
        );
        assert_eq!(
            dispatch(Ok(VcpuExit::MmioWrite(0xffff_fff0, &[1])), &pio, &mmio),
            Emulation::Continue
        );
        assert!(p.lock().unwrap().written.is_empty() && m.lock().unwrap().written.is_empty());
    }

    #[test]
    fn lifecycle_exits() {
        let (pio, mmio, _, _) = buses();
        assert_eq!(
            dispatch(Ok(VcpuExit::Hlt), &pio, &mmio),
            Emulation::Stop(ExitReason::PowerOff)
        );
        assert_eq!(
            dispatch(Ok(VcpuExit::Shutdown), &pio, &mmio),
            Emulation::Shutdown
        );
        assert_eq!(
            dispatch(Ok(VcpuExit::InternalError), &pio, &mmio),
            Emulation::InternalError
        );
        assert_eq!(
            dispatch(Ok(VcpuExit::Intr), &pio, &mmio),
            Emulation::Continue
        );
        let kicked = kvm_ioctls::Error::new(libc::EINTR);
        assert_eq!(dispatch(Err(kicked), &pio, &mmio), Emulation::Kicked);
        let failed = kvm_ioctls::Error::new(libc::EFAULT);
        assert!(matches!(
            dispatch(Err(failed), &pio, &mmio),
            Emulation::Crash(m) if m.contains("KVM_RUN failed")
        ));
        assert!(matches!(
            dispatch(Ok(VcpuExit::FailEntry(0x21, 1)), &pio, &mmio),
            Emulation::Crash(m) if m.contains("0x21")
        ));
        assert!(matches!(
            dispatch(Ok(VcpuExit::Debug(Default::default())), &pio, &mmio),
            Emulation::Crash(m) if m.contains("unexpected")
        ));
    }
}
