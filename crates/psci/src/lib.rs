//! PSCI 1.1 (Arm DEN0022) and SMCCC 1.1 (Arm DEN0028) as seen by a guest:
//! decoding of a call from its registers ([`decode`]) and the per-VM vCPU
//! power state machine ([`PowerState::handle`]) that answers it.
//!
//! The state machine only decides; it returns an [`Action`] and the
//! hypervisor applies it (writes x0, wakes a pCPU, stops or restarts the VM).
#![no_std]
#![deny(unsafe_code)]

use bulkhead_types::VcpuId;

/// Function ids (SMCCC 1.1 section 2.5 for the encoding; PSCI 1.1 table 5.1
/// for the PSCI ones). `SMC32` ids start 0x84.., `SMC64` ids 0xC4...
pub mod fid {
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    pub const CPU_SUSPEND_64: u32 = 0xC400_0001;
    pub const CPU_OFF: u32 = 0x8400_0002;
    pub const CPU_ON_32: u32 = 0x8400_0003;
    pub const CPU_ON_64: u32 = 0xC400_0003;
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    pub const AFFINITY_INFO_64: u32 = 0xC400_0004;
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    pub const PSCI_FEATURES: u32 = 0x8400_000A;
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// SMCCC_ARCH_WORKAROUND_1 (Spectre v2 mitigation query).
    pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
    /// Bulkhead's null hypercall: fast SMC64 call, owning entity 6 =
    /// Vendor Specific Hypervisor Service (SMCCC 1.1 table 6-1).
    pub const BULKHEAD_NULL: u32 = 0xC600_0000;
    /// Bulkhead VM info: x0 = restart count, x1 = vCPU index.
    pub const BULKHEAD_VM_INFO: u32 = 0xC600_0001;
    /// Bulkhead timer lateness: x0 = how many counter ticks the calling
    /// vCPU's last virtual-timer interrupt was past its compare value when
    /// it reached the hypervisor (CNTVCT - CNTV_CVAL on arrival at EL2):
    /// the delay the platform added before Bulkhead ran.
    pub const BULKHEAD_TIMER_LATE: u32 = 0xC600_0002;
}

/// PSCI return codes (PSCI 1.1 table 5.2), as the signed values a guest
/// sees in w0/x0.
pub mod status {
    pub const SUCCESS: i64 = 0;
    pub const NOT_SUPPORTED: i64 = -1;
    pub const INVALID_PARAMETERS: i64 = -2;
    pub const DENIED: i64 = -3;
    pub const ALREADY_ON: i64 = -4;
    pub const ON_PENDING: i64 = -5;
    pub const INTERNAL_FAILURE: i64 = -6;
    pub const NOT_PRESENT: i64 = -7;
    pub const DISABLED: i64 = -8;
    pub const INVALID_ADDRESS: i64 = -9;
}

/// PSCI_VERSION result: major 1, minor 1 (PSCI 1.1 5.1.1).
pub const PSCI_VERSION_1_1: u64 = 0x0001_0001;
/// SMCCC_VERSION result: 1.1 (SMCCC 1.1 section 7.2.1).
pub const SMCCC_VERSION_1_1: u64 = 0x0001_0001;
/// MIGRATE_INFO_TYPE result: 2 = Trusted OS not present or does not require
/// migration (PSCI 1.1 5.1.11).
pub const MIGRATE_INFO_TYPE_NOT_PRESENT: u64 = 2;

/// AFFINITY_INFO results (PSCI 1.1 5.1.5).
pub mod affinity {
    pub const ON: u64 = 0;
    pub const OFF: u64 = 1;
    pub const ON_PENDING: u64 = 2;
}

/// A decoded SMCCC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Version,
    Features {
        fid: u32,
    },
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    CpuOff,
    CpuSuspend,
    AffinityInfo {
        target: u64,
        level: u64,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    SmcccVersion,
    SmcccArchFeatures {
        fid: u32,
    },
    BulkheadNull,
    BulkheadVmInfo,
    BulkheadTimerLate,
    Unknown {
        fid: u32,
    },
}

/// Decode a call from x0..x3. The function id is w0: SMCCC 1.1 section 2.5
/// says the upper half of x0 is ignored. SMC32 calls take 32-bit arguments
/// (SMCCC 1.1 section 3.1: the upper halves of x1..x7 are ignored for SMC32),
/// so their arguments are truncated.
pub fn decode(x0: u64, x1: u64, x2: u64, x3: u64) -> Call {
    let w = |x: u64| u64::from(x as u32);
    match x0 as u32 {
        fid::PSCI_VERSION => Call::Version,
        fid::CPU_SUSPEND_32 | fid::CPU_SUSPEND_64 => Call::CpuSuspend,
        fid::CPU_OFF => Call::CpuOff,
        fid::CPU_ON_32 => Call::CpuOn {
            target: w(x1),
            entry: w(x2),
            context: w(x3),
        },
        fid::CPU_ON_64 => Call::CpuOn {
            target: x1,
            entry: x2,
            context: x3,
        },
        fid::AFFINITY_INFO_32 => Call::AffinityInfo {
            target: w(x1),
            level: w(x2),
        },
        fid::AFFINITY_INFO_64 => Call::AffinityInfo {
            target: x1,
            level: x2,
        },
        fid::MIGRATE_INFO_TYPE => Call::MigrateInfoType,
        fid::SYSTEM_OFF => Call::SystemOff,
        fid::SYSTEM_RESET => Call::SystemReset,
        fid::PSCI_FEATURES => Call::Features { fid: x1 as u32 },
        fid::SMCCC_VERSION => Call::SmcccVersion,
        fid::SMCCC_ARCH_FEATURES => Call::SmcccArchFeatures { fid: x1 as u32 },
        fid::BULKHEAD_NULL => Call::BulkheadNull,
        fid::BULKHEAD_VM_INFO => Call::BulkheadVmInfo,
        fid::BULKHEAD_TIMER_LATE => Call::BulkheadTimerLate,
        other => Call::Unknown { fid: other },
    }
}

/// Most vCPUs one VM can have.
pub const MAX_VCPUS: usize = 8;

/// Affinity fields of MPIDR_EL1 (Arm ARM D24.2.116): Aff0 [7:0], Aff1
/// [15:8], Aff2 [23:16], Aff3 [39:32].
const AFF0_SHIFT: u32 = 0;
const AFF1_SHIFT: u32 = 8;
const AFF2_SHIFT: u32 = 16;
const AFF3_SHIFT: u32 = 32;
/// vCPUs per Aff1 cluster: 16, the most a GICv3 SGI target list reaches.
const CLUSTER: u16 = 16;

/// The MPIDR_EL1 affinity value vCPU `index` sees (without RES1 bit 31).
pub fn vcpu_mpidr(index: u16) -> u64 {
    (u64::from(index % CLUSTER) << AFF0_SHIFT) | (u64::from(index / CLUSTER) << AFF1_SHIFT)
}

/// The vCPU whose MPIDR affinity is `mpidr`, if it exists in a VM of
/// `n_vcpus`. Aff2 and Aff3 must be 0; other non-affinity bits (RES1 bit 31,
/// U, MT) are ignored.
pub fn vcpu_from_mpidr(mpidr: u64, n_vcpus: u16) -> Option<VcpuId> {
    let aff = |shift: u32| (mpidr >> shift) & 0xff;
    if aff(AFF2_SHIFT) != 0 || aff(AFF3_SHIFT) != 0 {
        return None;
    }
    let aff0 = aff(AFF0_SHIFT);
    if aff0 >= u64::from(CLUSTER) {
        return None;
    }
    let index = aff(AFF1_SHIFT) * u64::from(CLUSTER) + aff0;
    if index < u64::from(n_vcpus) {
        u16::try_from(index).ok().map(VcpuId)
    } else {
        None
    }
}

/// Power state of one vCPU (PSCI 1.1 5.1.5, AFFINITY_INFO states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VcpuPower {
    #[default]
    Off,
    /// CPU_ON accepted; the vCPU has not started running yet.
    OnPending {
        entry: u64,
        context: u64,
    },
    On,
}

/// The guest RAM range (IPA) in which CPU_ON entry points are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRam {
    pub base: u64,
    pub size: u64,
}

impl GuestRam {
    fn contains(&self, ipa: u64) -> bool {
        ipa.checked_sub(self.base)
            .is_some_and(|off| off < self.size)
    }
}

/// What the hypervisor must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Put the value in x0 and resume the caller. (For `BulkheadVmInfo` the
    /// hypervisor also puts the caller's vCPU index in x1.)
    Return(u64),
    /// Return SUCCESS to the caller and wake the pCPU that runs `vcpu`,
    /// which then calls [`PowerState::take_start`].
    StartVcpu {
        vcpu: VcpuId,
        entry: u64,
        context: u64,
    },
    /// CPU_OFF succeeded: the caller's vCPU stops; nothing is returned.
    StopCaller,
    /// Stop the whole VM.
    SystemOff,
    /// Restart the VM from a fresh image.
    SystemReset,
}

fn ret(code: i64) -> Action {
    Action::Return(code as u64)
}

/// The power state of every vCPU of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerState {
    cpus: [VcpuPower; MAX_VCPUS],
    n: u16,
}

impl PowerState {
    /// A VM of `n_vcpus` (clamped to [`MAX_VCPUS`]), all off. Call
    /// [`PowerState::boot`] to start it.
    pub fn new(n_vcpus: u16) -> Self {
        Self {
            cpus: [VcpuPower::Off; MAX_VCPUS],
            n: n_vcpus.min(MAX_VCPUS as u16),
        }
    }

    /// Number of vCPUs in the VM.
    pub fn n_vcpus(&self) -> u16 {
        self.n
    }

    /// VM (re)start: vCPU 0 is pending at `entry` with `context` (x0, the
    /// DTB address for Linux), all others off.
    pub fn boot(&mut self, entry: u64, context: u64) {
        self.stop_all();
        if let Some(cpu0) = self.slot(VcpuId(0)) {
            *cpu0 = VcpuPower::OnPending { entry, context };
        }
    }

    /// Called on the vCPU's own pCPU when it is woken: an OnPending vCPU
    /// becomes On and gets its entry point and context id.
    pub fn take_start(&mut self, vcpu: VcpuId) -> Option<(u64, u64)> {
        let slot = self.slot(vcpu)?;
        match *slot {
            VcpuPower::OnPending { entry, context } => {
                *slot = VcpuPower::On;
                Some((entry, context))
            }
            _ => None,
        }
    }

    /// The state of `vcpu`, or `None` if it is not in this VM.
    pub fn state(&self, vcpu: VcpuId) -> Option<VcpuPower> {
        if vcpu.0 < self.n {
            self.cpus.get(vcpu.index()).copied()
        } else {
            None
        }
    }

    /// Every vCPU off (SYSTEM_OFF, SYSTEM_RESET, VM stop).
    pub fn stop_all(&mut self) {
        self.cpus = [VcpuPower::Off; MAX_VCPUS];
    }

    fn slot(&mut self, vcpu: VcpuId) -> Option<&mut VcpuPower> {
        if vcpu.0 < self.n {
            self.cpus.get_mut(vcpu.index())
        } else {
            None
        }
    }

    /// Answer `call` made by vCPU `caller`.
    pub fn handle(
        &mut self,
        call: Call,
        caller: VcpuId,
        ram: GuestRam,
        restart_count: u64,
    ) -> Action {
        if self.state(caller).is_none() {
            // A caller outside the VM is a hypervisor bug, not guest input;
            // still answer rather than panic.
            return ret(status::INTERNAL_FAILURE);
        }
        match call {
            Call::Version => Action::Return(PSCI_VERSION_1_1),
            Call::Features { fid } => ret(features(fid)),
            Call::CpuOn {
                target,
                entry,
                context,
            } => self.cpu_on(target, entry, context, ram),
            Call::CpuOff => match self.slot(caller) {
                Some(slot) => {
                    *slot = VcpuPower::Off;
                    Action::StopCaller
                }
                None => ret(status::INTERNAL_FAILURE),
            },
            // PSCI 1.1 5.1.2: CPU_SUSPEND is mandatory in PSCI, but a guest
            // that is told NOT_SUPPORTED through PSCI_FEATURES falls back to
            // WFI, which traps to us anyway.
            Call::CpuSuspend => ret(status::NOT_SUPPORTED),
            Call::AffinityInfo { target, level } => self.affinity_info(target, level),
            Call::MigrateInfoType => Action::Return(MIGRATE_INFO_TYPE_NOT_PRESENT),
            Call::SystemOff => Action::SystemOff,
            Call::SystemReset => Action::SystemReset,
            Call::SmcccVersion => Action::Return(SMCCC_VERSION_1_1),
            // SMCCC 1.1 7.2.2: NOT_SUPPORTED for every arch function for now,
            // including SMCCC_ARCH_WORKAROUND_1.
            Call::SmcccArchFeatures { .. } => ret(status::NOT_SUPPORTED),
            Call::BulkheadNull => ret(status::SUCCESS),
            Call::BulkheadVmInfo => Action::Return(restart_count),
            // The hypervisor answers it from its own records before the
            // power state machine is asked; nothing here knows the value.
            Call::BulkheadTimerLate => ret(status::NOT_SUPPORTED),
            Call::Unknown { .. } => ret(status::NOT_SUPPORTED),
        }
    }

    /// PSCI 1.1 5.1.4 CPU_ON.
    fn cpu_on(&mut self, target: u64, entry: u64, context: u64, ram: GuestRam) -> Action {
        let Some(vcpu) = vcpu_from_mpidr(target, self.n) else {
            return ret(status::INVALID_PARAMETERS);
        };
        let Some(slot) = self.slot(vcpu) else {
            return ret(status::INVALID_PARAMETERS);
        };
        match *slot {
            VcpuPower::On => ret(status::ALREADY_ON),
            VcpuPower::OnPending { .. } => ret(status::ON_PENDING),
            VcpuPower::Off => {
                // The entry point must be an instruction in the VM's RAM;
                // anything else would start the vCPU into a stage-2 fault.
                if !ram.contains(entry) || !entry.is_multiple_of(4) {
                    return ret(status::INVALID_ADDRESS);
                }
                *slot = VcpuPower::OnPending { entry, context };
                Action::StartVcpu {
                    vcpu,
                    entry,
                    context,
                }
            }
        }
    }

    /// PSCI 1.1 5.1.5 AFFINITY_INFO. From PSCI 1.0 only level 0 need be
    /// supported, which is all a VM with a flat vCPU set has.
    fn affinity_info(&self, target: u64, level: u64) -> Action {
        if level != 0 {
            return ret(status::INVALID_PARAMETERS);
        }
        match vcpu_from_mpidr(target, self.n).and_then(|v| self.state(v)) {
            Some(VcpuPower::On) => Action::Return(affinity::ON),
            Some(VcpuPower::Off) => Action::Return(affinity::OFF),
            Some(VcpuPower::OnPending { .. }) => Action::Return(affinity::ON_PENDING),
            None => ret(status::INVALID_PARAMETERS),
        }
    }
}

/// PSCI 1.1 5.1.14 PSCI_FEATURES: SUCCESS (0, no feature flags) for the
/// functions implemented, NOT_SUPPORTED otherwise.
fn features(f: u32) -> i64 {
    match f {
        fid::PSCI_VERSION
        | fid::CPU_ON_32
        | fid::CPU_ON_64
        | fid::CPU_OFF
        | fid::AFFINITY_INFO_32
        | fid::AFFINITY_INFO_64
        | fid::SYSTEM_OFF
        | fid::SYSTEM_RESET
        | fid::PSCI_FEATURES
        | fid::MIGRATE_INFO_TYPE
        | fid::SMCCC_VERSION => status::SUCCESS,
        _ => status::NOT_SUPPORTED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: GuestRam = GuestRam {
        base: 0x4000_0000,
        size: 0x1000_0000,
    };
    const ENTRY: u64 = 0x4008_0000;

    fn booted(n: u16) -> PowerState {
        let mut p = PowerState::new(n);
        p.boot(ENTRY, 0x4800_0000);
        assert_eq!(p.take_start(VcpuId(0)), Some((ENTRY, 0x4800_0000)));
        p
    }

    fn h(p: &mut PowerState, call: Call) -> Action {
        p.handle(call, VcpuId(0), RAM, 3)
    }

    fn err(code: i64) -> Action {
        Action::Return(code as u64)
    }

    fn cpu_on(target: u64, entry: u64) -> Call {
        Call::CpuOn {
            target,
            entry,
            context: 0x77,
        }
    }

    #[test]
    fn decode_recognises_every_function() {
        let cases = [
            (0x8400_0000, Call::Version),
            (0x8400_0001, Call::CpuSuspend),
            (0xC400_0001, Call::CpuSuspend),
            (0x8400_0002, Call::CpuOff),
            (0x8400_0006, Call::MigrateInfoType),
            (0x8400_0008, Call::SystemOff),
            (0x8400_0009, Call::SystemReset),
            (0x8000_0000, Call::SmcccVersion),
            (0xC600_0000, Call::BulkheadNull),
            (0xC600_0001, Call::BulkheadVmInfo),
            (0xC600_0002, Call::BulkheadTimerLate),
            (0xC600_0003, Call::Unknown { fid: 0xC600_0003 }),
        ];
        for (x0, call) in cases {
            assert_eq!(decode(x0, 0, 0, 0), call, "fid {x0:#x}");
        }
        assert_eq!(
            decode(0x8400_000A, 0xffff_ffff_8400_0003, 0, 0),
            Call::Features { fid: 0x8400_0003 }
        );
        assert_eq!(
            decode(0x8000_0001, 0x8000_8000, 0, 0),
            Call::SmcccArchFeatures { fid: 0x8000_8000 }
        );
    }

    #[test]
    fn upper_half_of_x0_is_ignored() {
        assert_eq!(decode(0xdead_beef_8400_0000, 0, 0, 0), Call::Version);
    }

    #[test]
    fn smc32_cpu_on_truncates_arguments() {
        assert_eq!(
            decode(
                0x8400_0003,
                0xffff_0000_0000_0001,
                0x1_4008_0000,
                0x9_0000_0042
            ),
            Call::CpuOn {
                target: 1,
                entry: 0x4008_0000,
                context: 0x42
            }
        );
        assert_eq!(
            decode(0x8400_0004, 0x1_0000_0002, 0x1_0000_0000, 0),
            Call::AffinityInfo {
                target: 2,
                level: 0
            }
        );
    }

    #[test]
    fn smc64_cpu_on_keeps_full_arguments() {
        assert_eq!(
            decode(0xC400_0003, 0x1_0000_0001, 0x1_4008_0000, 0x9_0000_0042),
            Call::CpuOn {
                target: 0x1_0000_0001,
                entry: 0x1_4008_0000,
                context: 0x9_0000_0042
            }
        );
        assert_eq!(
            decode(0xC400_0004, 0x1_0000_0002, 5, 0),
            Call::AffinityInfo {
                target: 0x1_0000_0002,
                level: 5
            }
        );
    }

    #[test]
    fn mpidr_round_trips_for_all_vcpus() {
        for i in 0..40u16 {
            assert_eq!(vcpu_from_mpidr(vcpu_mpidr(i), 40), Some(VcpuId(i)));
        }
        assert_eq!(vcpu_mpidr(17), 0x101);
    }

    #[test]
    fn mpidr_rejects_out_of_range_and_high_affinity() {
        assert_eq!(vcpu_from_mpidr(4, 4), None);
        assert_eq!(vcpu_from_mpidr(0x1_0000, 4), None);
        assert_eq!(vcpu_from_mpidr(0x1_0000_0000, 4), None);
        // Aff0 beyond the 16-per-cluster layout is not a vCPU.
        assert_eq!(vcpu_from_mpidr(0x10, 64), None);
    }

    #[test]
    fn mpidr_ignores_non_affinity_bits() {
        // RES1 bit 31, U bit 30, MT bit 24.
        assert_eq!(
            vcpu_from_mpidr((1 << 31) | (1 << 30) | (1 << 24) | 2, 4),
            Some(VcpuId(2))
        );
    }

    #[test]
    fn versions_and_migrate_info() {
        let mut p = booted(2);
        assert_eq!(h(&mut p, Call::Version), Action::Return(0x0001_0001));
        assert_eq!(h(&mut p, Call::SmcccVersion), Action::Return(0x0001_0001));
        assert_eq!(h(&mut p, Call::MigrateInfoType), Action::Return(2));
    }

    #[test]
    fn features_reports_implemented_functions_only() {
        let mut p = booted(1);
        for f in [
            0x8400_0000,
            0x8400_0002,
            0x8400_0003,
            0xC400_0003,
            0x8400_0004,
            0xC400_0004,
            0x8400_0006,
            0x8400_0008,
            0x8400_0009,
            0x8400_000A,
            0x8000_0000,
        ] {
            assert_eq!(
                h(&mut p, Call::Features { fid: f }),
                Action::Return(0),
                "{f:#x}"
            );
        }
        for f in [0x8400_0001, 0xC400_0001, 0x8400_0005, 0xC600_0000, 0] {
            assert_eq!(
                h(&mut p, Call::Features { fid: f }),
                err(status::NOT_SUPPORTED),
                "{f:#x}"
            );
        }
    }

    #[test]
    fn cpu_on_starts_an_off_vcpu_once() {
        let mut p = booted(4);
        assert_eq!(
            h(&mut p, cpu_on(1, ENTRY)),
            Action::StartVcpu {
                vcpu: VcpuId(1),
                entry: ENTRY,
                context: 0x77
            }
        );
        assert_eq!(h(&mut p, cpu_on(1, ENTRY)), err(status::ON_PENDING));
        assert_eq!(p.take_start(VcpuId(1)), Some((ENTRY, 0x77)));
        assert_eq!(p.take_start(VcpuId(1)), None);
        assert_eq!(h(&mut p, cpu_on(1, ENTRY)), err(status::ALREADY_ON));
    }

    #[test]
    fn cpu_on_of_caller_itself_is_already_on() {
        let mut p = booted(2);
        assert_eq!(h(&mut p, cpu_on(0, ENTRY)), err(status::ALREADY_ON));
    }

    #[test]
    fn cpu_on_rejects_unknown_target() {
        let mut p = booted(2);
        assert_eq!(h(&mut p, cpu_on(2, ENTRY)), err(status::INVALID_PARAMETERS));
        assert_eq!(
            h(&mut p, cpu_on(0x1_0000, ENTRY)),
            err(status::INVALID_PARAMETERS)
        );
    }

    #[test]
    fn cpu_on_rejects_entry_outside_ram_or_misaligned() {
        let mut p = booted(2);
        for entry in [
            0,
            RAM.base - 4,
            RAM.base + RAM.size,
            u64::MAX - 3,
            ENTRY + 2,
        ] {
            assert_eq!(
                h(&mut p, cpu_on(1, entry)),
                err(status::INVALID_ADDRESS),
                "{entry:#x}"
            );
        }
        // The target stays off after a rejected call.
        assert_eq!(p.state(VcpuId(1)), Some(VcpuPower::Off));
        // First and last words of RAM are valid.
        assert!(matches!(
            h(&mut p, cpu_on(1, RAM.base + RAM.size - 4)),
            Action::StartVcpu { .. }
        ));
    }

    #[test]
    fn ram_at_top_of_address_space_does_not_overflow() {
        let mut p = booted(2);
        let ram = GuestRam {
            base: u64::MAX - 0xfff,
            size: 0x1000,
        };
        assert!(matches!(
            p.handle(cpu_on(1, u64::MAX - 3), VcpuId(0), ram, 0),
            Action::StartVcpu { .. }
        ));
    }

    #[test]
    fn cpu_off_then_cpu_on_again_works() {
        let mut p = booted(2);
        h(&mut p, cpu_on(1, ENTRY));
        p.take_start(VcpuId(1));
        assert_eq!(
            p.handle(Call::CpuOff, VcpuId(1), RAM, 0),
            Action::StopCaller
        );
        assert_eq!(p.state(VcpuId(1)), Some(VcpuPower::Off));
        assert_eq!(
            h(&mut p, cpu_on(1, ENTRY + 0x100)),
            Action::StartVcpu {
                vcpu: VcpuId(1),
                entry: ENTRY + 0x100,
                context: 0x77
            }
        );
    }

    #[test]
    fn affinity_info_reports_each_state() {
        let mut p = booted(3);
        let aff = |p: &mut PowerState, t| {
            h(
                p,
                Call::AffinityInfo {
                    target: t,
                    level: 0,
                },
            )
        };
        assert_eq!(aff(&mut p, 0), Action::Return(0));
        assert_eq!(aff(&mut p, 1), Action::Return(1));
        h(&mut p, cpu_on(1, ENTRY));
        assert_eq!(aff(&mut p, 1), Action::Return(2));
        p.take_start(VcpuId(1));
        assert_eq!(aff(&mut p, 1), Action::Return(0));
        assert_eq!(aff(&mut p, 3), err(status::INVALID_PARAMETERS));
    }

    #[test]
    fn affinity_info_above_level_zero_is_invalid() {
        let mut p = booted(2);
        assert_eq!(
            h(
                &mut p,
                Call::AffinityInfo {
                    target: 0,
                    level: 1
                }
            ),
            err(status::INVALID_PARAMETERS)
        );
    }

    #[test]
    fn system_calls_map_to_actions() {
        let mut p = booted(1);
        assert_eq!(h(&mut p, Call::SystemOff), Action::SystemOff);
        assert_eq!(h(&mut p, Call::SystemReset), Action::SystemReset);
    }

    #[test]
    fn smccc_arch_features_and_suspend_are_not_supported() {
        let mut p = booted(1);
        assert_eq!(
            h(&mut p, Call::SmcccArchFeatures { fid: 0x8000_8000 }),
            err(status::NOT_SUPPORTED)
        );
        assert_eq!(h(&mut p, Call::CpuSuspend), err(status::NOT_SUPPORTED));
        assert_eq!(
            h(&mut p, Call::Unknown { fid: 0x8400_0020 }),
            Action::Return(u64::MAX)
        );
    }

    #[test]
    fn bulkhead_calls_return_null_and_restart_count() {
        let mut p = booted(1);
        assert_eq!(h(&mut p, Call::BulkheadNull), Action::Return(0));
        assert_eq!(h(&mut p, Call::BulkheadVmInfo), Action::Return(3));
    }

    #[test]
    fn caller_outside_vm_gets_an_error_not_a_panic() {
        let mut p = booted(2);
        for caller in [2, 8, u16::MAX] {
            assert_eq!(
                p.handle(Call::CpuOff, VcpuId(caller), RAM, 0),
                err(status::INTERNAL_FAILURE)
            );
        }
    }

    #[test]
    fn boot_resets_every_vcpu() {
        let mut p = booted(3);
        h(&mut p, cpu_on(1, ENTRY));
        h(&mut p, cpu_on(2, ENTRY));
        p.take_start(VcpuId(1));
        p.boot(0x4000_0000, 0x4400_0000);
        assert_eq!(
            p.state(VcpuId(0)),
            Some(VcpuPower::OnPending {
                entry: 0x4000_0000,
                context: 0x4400_0000
            })
        );
        assert_eq!(p.state(VcpuId(1)), Some(VcpuPower::Off));
        assert_eq!(p.state(VcpuId(2)), Some(VcpuPower::Off));
    }

    #[test]
    fn stop_all_turns_everything_off() {
        let mut p = booted(2);
        p.stop_all();
        assert_eq!(p.state(VcpuId(0)), Some(VcpuPower::Off));
        assert_eq!(p.take_start(VcpuId(0)), None);
    }

    #[test]
    fn vcpu_count_is_clamped_and_state_is_bounded() {
        let p = PowerState::new(100);
        assert_eq!(p.n_vcpus(), MAX_VCPUS as u16);
        assert_eq!(p.state(VcpuId(MAX_VCPUS as u16)), None);
        let p = PowerState::new(2);
        assert_eq!(p.state(VcpuId(2)), None);
        assert_eq!(p.state(VcpuId(1)), Some(VcpuPower::Off));
    }

    #[test]
    fn new_vm_has_all_vcpus_off() {
        let mut p = PowerState::new(2);
        assert_eq!(p.state(VcpuId(0)), Some(VcpuPower::Off));
        assert_eq!(p.take_start(VcpuId(0)), None);
    }
}
