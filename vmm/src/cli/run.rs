//! `plainvm run` and `plainvm restore`: a VM from flags and a config file, or from a snapshot;
//! registered by name, served on its API socket, run until it stops.

use crate::api;
use crate::config::admission::Admission;
use crate::config::cgroup::{self, CgroupConfig, CgroupLimits};
use crate::config::jail::{self, JailConfig};
use crate::config::{FileConfig, Seccomp, VmConfig};
use crate::host::cgroup::CgroupInfo;
use crate::host::exit::ExitReason;
use crate::host::jail::Jail;
use crate::host::registry::{self, Registration};
use crate::vm::state::VmState;
use crate::vm::{RestoreMemory, RunResult, Vm};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct RestoreArgs {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// The VM's name in the registry (default: vm-<pid>).
    #[arg(long)]
    pub name: Option<String>,
    /// Serve the control API on this unix socket.
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Read the whole memory file at start instead of mapping it lazily.
    #[arg(long)]
    pub copy_memory: bool,
    /// Seccomp filters on the VMM's threads: on (the default) or off; the
    /// snapshot's configuration cannot turn them off. Off is for debugging a
    /// filter that stops a legitimate call only: it removes a layer of protection.
    #[arg(long, value_name = "on|off")]
    pub seccomp: Option<Seccomp>,
    #[command(flatten)]
    pub confine: ConfineArgs,
    /// Change a host-specific configuration key (nets, disks, vsock, cpu_affinity), e.g.
    /// `--set 'nets=[{"tap":"tap7"}]'`; objects and lists are merged into the saved ones.
    #[arg(long = "set", value_name = "KEY=JSON")]
    pub set: Vec<String>,
    /// The snapshot may name disk images and vsock sockets under DIR (repeatable); anything
    /// else it names must be given with --set.
    #[arg(long, value_name = "DIR")]
    pub allow_dir: Vec<PathBuf>,
    /// The snapshot may name tap NAME (repeatable; `tap*` allows a prefix).
    #[arg(long, value_name = "NAME")]
    pub allow_tap: Vec<String>,
    /// Print timing on exit.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args)]
pub struct RunArgs {
    /// The VM's name in the registry (default: vm-<pid>); other subcommands find it by name.
    #[arg(long)]
    pub name: Option<String>,
    /// Serve the control API (pause, resume, info, snapshot) on this unix socket instead of
    /// the default one in the VM's runtime directory (the registry entry then points here).
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Kernel: vmlinux ELF (PVH or 64-bit entry), bzImage, or a plainvm test guest ELF.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default for Linux: "console=ttyS0 reboot=k panic=-1").
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs (default 1).
    #[arg(long)]
    pub cpus: Option<u64>,
    /// Guest memory, e.g. 128M or 2G (a bare number means MiB; default 128M), or
    /// size=SIZE,merge=on to let KSM merge identical guest pages.
    #[arg(long, value_name = "SIZE|size=SIZE,merge=on")]
    pub memory: Option<String>,
    /// Pin vCPU i to the i-th host CPU of LIST, e.g. 0,1 or 0-3.
    #[arg(long, value_name = "LIST")]
    pub cpu_affinity: Option<String>,
    /// JSON file with the same keys (kernel, initrd, cmdline, cpus, memory, cpu_template); flags win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CPUID template: auto (safe on hosts that emulate guest ring 0), host or safe.
    #[arg(long)]
    pub cpu_template: Option<crate::config::CpuTemplate>,
    /// Attach a virtio-rng device (entropy from the host's getrandom).
    #[arg(long)]
    pub rng: bool,
    /// A virtio-net device over host tap NAME (created if missing), e.g. tap=tap0,mac=02:00:00:00:00:01;
    /// may be repeated. Without mac= a locally administered address is generated.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<String>,
    /// A virtio-blk disk over a raw image file; may be repeated (the first is /dev/vda).
    /// readonly=on makes writes fail; id= is what the guest reads as the disk's serial.
    #[arg(long, value_name = "path=IMG[,readonly=on][,id=NAME]")]
    pub disk: Vec<String>,
    /// A virtio-vsock device for guest CID N. The host connects to the unix socket PATH and
    /// writes "CONNECT <port>\n" to reach a guest port; guest connections to host port P go
    /// to the unix socket PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<String>,
    /// A virtio-balloon device; size= is the initial target (memory the guest gives back),
    /// free-page-reporting=on lets the guest hand back free memory as well.
    #[arg(long, value_name = "[size=SIZE][,free-page-reporting=on]", num_args = 0..=1, default_missing_value = "")]
    pub balloon: Option<String>,
    /// Seccomp filters on the VMM's threads: on (the default) or off. Off is for debugging a
    /// filter that stops a legitimate call only: it removes a layer of protection.
    #[arg(long, value_name = "on|off")]
    pub seccomp: Option<Seccomp>,
    #[command(flatten)]
    pub confine: ConfineArgs,
    /// Print boot milestones and timing on exit.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `--jail`, `--jail-dir` and `--cgroup`: the same on run, restore and receive.
#[derive(Args)]
pub struct ConfineArgs {
    /// Run as the unprivileged UID:GID in a jail that shows only its jail directory (see
    /// docs/security.md); snapshots then go under that directory.
    #[arg(long, value_name = "UID:GID")]
    pub jail: Option<String>,
    /// The jail's directory, the VM's `/` (default /var/lib/plainvm/jail/NAME).
    #[arg(long, value_name = "DIR")]
    pub jail_dir: Option<PathBuf>,
    /// Put the VM in a cgroup of its own with these limits, e.g.
    /// memory.max=512M,cpu.max=50000 100000,pids.max=256 (see docs/security.md).
    #[arg(long, value_name = "memory.max=SIZE,cpu.max=QUOTA [PERIOD],pids.max=N")]
    pub cgroup: Option<String>,
}

impl ConfineArgs {
    /// The host settings these flags give (over the config file's jail and cgroup, if any).
    pub fn settings(
        &self,
        seccomp: Seccomp,
        file_jail: Option<JailConfig>,
        file_cgroup: Option<CgroupConfig>,
    ) -> Result<HostSettings, String> {
        Ok(HostSettings {
            seccomp,
            jail: jail::from_flags(self.jail.as_deref(), self.jail_dir.as_deref(), file_jail)
                .map_err(|e| e.to_string())?,
            cgroup: cgroup_limits(self.cgroup.as_deref(), file_cgroup)?,
        })
    }
}

/// What the local operator alone decides about the VMM process: filters, jail and cgroup.
pub struct HostSettings {
    pub seccomp: Seccomp,
    pub jail: Option<JailConfig>,
    pub cgroup: Option<CgroupLimits>,
}

/// The configuration `args` describe (the config file, with the flags on top), and the host
/// settings.
fn config(args: &RunArgs) -> Result<(VmConfig, HostSettings), String> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    let nets = (!args.net.is_empty())
        .then(|| {
            args.net
                .iter()
                .map(|s| crate::config::net::parse_net(s))
                .collect()
        })
        .transpose()
        .map_err(|e: crate::config::net::NetConfigError| e.to_string())?;
    let disks = (!args.disk.is_empty())
        .then(|| {
            args.disk
                .iter()
                .map(|s| crate::config::disk::parse_disk(s))
                .collect()
        })
        .transpose()
        .map_err(|e: crate::config::disk::DiskConfigError| e.to_string())?;
    let flags = FileConfig {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus,
        memory: args.memory.clone().map(serde_json::Value::String),
        cpu_affinity: args.cpu_affinity.clone(),
        cpu_template: args.cpu_template,
        rng: args.rng.then_some(true),
        nets,
        disks,
        vsock: args
            .vsock
            .as_deref()
            .map(crate::config::vsock::parse_vsock)
            .transpose()
            .map_err(|e| e.to_string())?,
        balloon: args
            .balloon
            .as_deref()
            .map(crate::config::balloon::parse_balloon)
            .transpose()
            .map_err(|e| e.to_string())?,
        seccomp: args.seccomp,
        jail: None,
        cgroup: None,
    };
    let merged = file.merge(flags);
    let seccomp = merged.seccomp.unwrap_or_default();
    let host = args
        .confine
        .settings(seccomp, merged.jail.clone(), merged.cgroup.clone())?;
    Ok((merged.validate().map_err(|e| e.to_string())?, host))
}

/// The cgroup limits of `--cgroup` (over the config file's).
pub fn cgroup_limits(
    flag: Option<&str>,
    file: Option<CgroupConfig>,
) -> Result<Option<CgroupLimits>, String> {
    let c = match flag {
        Some(f) => Some(cgroup::parse_cgroup(f).map_err(|e| e.to_string())?),
        None => file,
    };
    c.map(|c| c.limits().map_err(|e| e.to_string())).transpose()
}

/// What confines the VMM process on its host: its jail (prepared) and its cgroup (entered).
pub struct Confinement {
    pub jail: Option<Jail>,
    pub cgroup: Option<CgroupInfo>,
}

/// The first steps, before any thread starts and before the VM is built, for VM `name` (None:
/// the generated name): the process enters its cgroup, and its jail is prepared with the
/// vsock socket's directory `vsock_dir` to be shown inside.
pub fn confine(
    settings: &HostSettings,
    name: Option<&str>,
    vsock_dir: Option<&Path>,
) -> Result<Confinement, String> {
    if settings.jail.is_none() && settings.cgroup.is_none() {
        return Ok(Confinement {
            jail: None,
            cgroup: None,
        });
    }
    // The name becomes a directory and a cgroup: checked (and free) before either is touched.
    let name = name.map_or_else(registry::generated_name, str::to_string);
    registry::check_free(&name).map_err(|e| e.to_string())?;
    let cgroup = settings
        .cgroup
        .as_ref()
        .map(|l| crate::host::cgroup::enter(&name, l))
        .transpose()
        .map_err(|e| e.to_string())?;
    let jail = match &settings.jail {
        Some(j) => {
            let mut jail = Jail::prepare(j, &name).map_err(|e| e.to_string())?;
            // Guest connections to host port P go to the socket PATH_P beside the vsock socket.
            if let Some(dir) = vsock_dir {
                jail.show(dir).map_err(|e| e.to_string())?;
            }
            Some(jail)
        }
        None => None,
    };
    Ok(Confinement { jail, cgroup })
}

/// The last step: `vm` runs jailed from here on, and knows its cgroup.
pub fn enter(c: &Confinement, vm: &Vm) -> Result<(), String> {
    if let Some(info) = &c.cgroup {
        vm.set_cgroup(info.clone());
    }
    if let Some(j) = &c.jail {
        vm.set_jailed(j.enter().map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// The directory of `cfg`'s vsock socket.
pub fn vsock_dir(cfg: &VmConfig) -> Option<&Path> {
    cfg.vsock.as_ref().and_then(|v| v.socket.parent())
}

/// Set up the seccomp filters (compiled now, installed by each thread once it is set up).
pub fn filters(setting: Option<Seccomp>) -> Result<(), String> {
    crate::seccomp::configure(setting.unwrap_or_default().is_on()).map_err(|e| e.to_string())
}

/// `plainvm run`.
pub fn run(args: RunArgs, start: Instant) -> Result<i32, String> {
    let (cfg, host) = config(&args)?;
    filters(Some(host.seccomp))?;
    let confined = confine(&host, args.name.as_deref(), vsock_dir(&cfg))?;
    let reg = register(args.name.as_deref(), args.api_sock.as_deref(), &cfg)?;
    let vm = Arc::new(Vm::boot(&cfg).map_err(|e| e.to_string())?);
    serve(&vm, reg.as_ref(), args.api_sock.as_deref(), &confined)?;
    let out = vm.run().map_err(|e| e.to_string())?;
    drop(reg);
    report(out, args.verbose, start)
}

/// `plainvm restore`.
pub fn restore(args: RestoreArgs, start: Instant) -> Result<i32, String> {
    filters(args.seccomp)?;
    let bytes = crate::snapshot::load_state(&args.dir).map_err(|e| e.to_string())?;
    let state = VmState::decode(&bytes).map_err(|e| e.to_string())?;
    let admission =
        Admission::new(&args.set, &args.allow_dir, &args.allow_tap).map_err(|e| e.to_string())?;
    let cfg = admission
        .admit(state.config.clone())
        .map_err(|e| e.to_string())?;
    cfg.check()
        .map_err(|e| format!("the snapshot's configuration cannot be used here: {e}"))?;
    let host = args
        .confine
        .settings(args.seccomp.unwrap_or_default(), None, None)?;
    // The whole chain of parents is checked before anything is registered or opened.
    crate::snapshot::parent_chain(&args.dir, admission.allow_dirs()).map_err(|e| e.to_string())?;
    let confined = confine(&host, args.name.as_deref(), vsock_dir(&cfg))?;
    let reg = register(args.name.as_deref(), args.api_sock.as_deref(), &cfg)?;
    let memory = RestoreMemory::Snapshot {
        dir: args.dir.clone(),
        copy: args.copy_memory,
        roots: admission.allow_dirs().to_vec(),
    };
    let vm = Arc::new(Vm::restore(&cfg, &state, memory).map_err(|e| e.to_string())?);
    drop(state);
    serve(&vm, reg.as_ref(), args.api_sock.as_deref(), &confined)?;
    let out = vm.run().map_err(|e| e.to_string())?;
    drop(reg);
    if args.verbose {
        let us = out.vcpu_start.duration_since(start).as_micros();
        plainvm_devices::log_line!(
            "restored: vCPUs running {}.{:03} ms after start; ran for {} ms",
            us / 1000,
            us % 1000,
            start.elapsed().as_millis()
        );
    }
    report(out, false, start)
}

/// Register the VM (see `registry::register`).
pub fn register(
    name: Option<&str>,
    api_sock: Option<&Path>,
    cfg: &VmConfig,
) -> Result<Option<Registration>, String> {
    registry::register(name, api_sock, cfg).map_err(|e| e.to_string())
}

/// Serve the VM's API on its registered socket (or the one given). The socket is bound before
/// the VM enters its jail (clients see it listen as root: SO_PEERCRED is that of listen()), and
/// served after.
pub fn serve(
    vm: &Arc<Vm>,
    reg: Option<&Registration>,
    api_sock: Option<&Path>,
    confined: &Confinement,
) -> Result<(), String> {
    let listener = api_path(reg, api_sock)
        .map(|s| api::server::bind(&s))
        .transpose()
        .map_err(|e| e.to_string())?;
    enter(confined, vm)?;
    match listener {
        Some(l) => api::server::start_on(l, vm.clone()).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Where the VM's API socket goes: the registry's, else `--api-sock`, else none.
pub fn api_path(reg: Option<&Registration>, api_sock: Option<&Path>) -> Option<PathBuf> {
    reg.map(|r| r.api_sock().to_path_buf())
        .or(api_sock.map(Path::to_path_buf))
}

/// Turn a finished run into an exit status, printing the timing report with `verbose`.
pub fn report(out: RunResult, verbose: bool, start: Instant) -> Result<i32, String> {
    if verbose {
        if let Some(t) = out.template {
            plainvm_devices::log_line!("cpu template {t:?}");
        }
        for (code, at) in &out.milestones {
            let us = at.duration_since(start).as_micros();
            plainvm_devices::log_line!("milestone {code} at {}.{:03} ms", us / 1000, us % 1000);
        }
        for line in
            crate::device_manager::hypercall::mark_report(&out.hypercall, start, out.vcpu_start)
        {
            plainvm_devices::log_line!("{line}");
        }
        let bp =
            crate::vcpu::emulation::BREAKPOINTS_INJECTED.load(std::sync::atomic::Ordering::Relaxed);
        plainvm_devices::log_line!("int3 emulation failures answered with #BP: {bp}");
        plainvm_devices::log_line!("ran for {} ms", start.elapsed().as_millis());
    }
    match out.reason {
        ExitReason::Crash(msg) => Err(msg),
        ExitReason::Migrated(msg) => {
            plainvm_devices::log_line!("{msg}");
            Ok(0)
        }
        r => Ok(r.status()),
    }
}
