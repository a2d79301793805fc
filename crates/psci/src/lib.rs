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

// Snapshot encoding. Layout, integers little-endian:
//   version u8 (STATE_VERSION)
//   vCPU count u16
//   MAX_VCPUS slots of: state u8 (0 off, 1 on pending, 2 on),
//     entry u64, context u64 (both 0 unless on pending)
// Slots at and beyond the vCPU count are always off. The encoding is
// canonical: a state that restores saves back to the same bytes.

/// Format version written first by [`PowerState::save_state`].
const STATE_VERSION: u8 = 1;

const TAG_OFF: u8 = 0;
const TAG_ON_PENDING: u8 = 1;
const TAG_ON: u8 = 2;

/// Bytes per vCPU slot in a saved state.
const SLOT_BYTES: usize = 1 + 8 + 8;

/// Why [`PowerState::restore_state`] refused a saved state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Fewer than [`PowerState::STATE_BYTES`] bytes.
    Truncated { len: usize },
    /// More than [`PowerState::STATE_BYTES`] bytes.
    TooLong { len: usize },
    /// A format version this code does not read.
    Version(u8),
    /// The state is of a VM with a different number of vCPUs.
    VcpuCount { saved: u16, expected: u16 },
    /// A vCPU's power state is not one of the three known ones.
    Power { vcpu: usize, tag: u8 },
    /// A vCPU that is not pending carries an entry point or context.
    StrayStart { vcpu: usize },
    /// A slot beyond the VM's vCPUs is not off.
    Absent { vcpu: usize },
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Truncated { len } => write!(
                f,
                "PSCI state truncated ({len} of {} bytes)",
                PowerState::STATE_BYTES
            ),
            Self::TooLong { len } => write!(
                f,
                "PSCI state too long ({len} bytes, expected {})",
                PowerState::STATE_BYTES
            ),
            Self::Version(v) => write!(
                f,
                "PSCI state format version {v} is not supported (expected {STATE_VERSION})"
            ),
            Self::VcpuCount { saved, expected } => write!(
                f,
                "PSCI state is of a VM with {saved} vCPUs, this one has {expected}"
            ),
            Self::Power { vcpu, tag } => write!(
                f,
                "PSCI state of vCPU {vcpu} is {tag}, not off (0), on pending (1) or on (2)"
            ),
            Self::StrayStart { vcpu } => write!(
                f,
                "PSCI state gives vCPU {vcpu} an entry point or context but no pending start"
            ),
            Self::Absent { vcpu } => {
                write!(
                    f,
                    "PSCI state powers vCPU {vcpu}, which the VM does not have"
                )
            }
        }
    }
}

impl core::error::Error for StateError {}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    let chunk = bytes.get(at..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*chunk))
}

impl PowerState {
    /// Size of a saved state (see the layout above [`STATE_VERSION`]).
    pub const STATE_BYTES: usize = 1 + 2 + MAX_VCPUS * SLOT_BYTES;

    /// Encode the power state of every vCPU.
    pub fn save_state(&self) -> [u8; Self::STATE_BYTES] {
        let Self { cpus, n } = self;
        let mut out = [0u8; Self::STATE_BYTES];
        let (head, slots) = out.split_at_mut(3);
        head[0] = STATE_VERSION;
        head[1..].copy_from_slice(&n.to_le_bytes());
        for (slot, cpu) in slots.chunks_exact_mut(SLOT_BYTES).zip(cpus) {
            let (tag, entry, context) = match *cpu {
                VcpuPower::Off => (TAG_OFF, 0, 0),
                VcpuPower::OnPending { entry, context } => (TAG_ON_PENDING, entry, context),
                VcpuPower::On => (TAG_ON, 0, 0),
            };
            slot[0] = tag;
            slot[1..9].copy_from_slice(&entry.to_le_bytes());
            slot[9..].copy_from_slice(&context.to_le_bytes());
        }
        out
    }

    /// Replace the power state with one saved by [`PowerState::save_state`]
    /// for a VM of the same vCPU count. Everything is checked first; on
    /// error `self` is unchanged. A pending start keeps its entry point
    /// and context, so [`PowerState::take_start`] returns them as before.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let len = bytes.len();
        if len < Self::STATE_BYTES {
            return Err(StateError::Truncated { len });
        }
        if len > Self::STATE_BYTES {
            return Err(StateError::TooLong { len });
        }
        let truncated = StateError::Truncated { len };
        let (&[version, n0, n1], slots) = bytes.split_first_chunk::<3>().ok_or(truncated)?;
        if version != STATE_VERSION {
            return Err(StateError::Version(version));
        }
        let saved = u16::from_le_bytes([n0, n1]);
        if saved != self.n {
            return Err(StateError::VcpuCount {
                saved,
                expected: self.n,
            });
        }
        let mut cpus = [VcpuPower::Off; MAX_VCPUS];
        for (vcpu, (slot, cpu)) in slots.chunks_exact(SLOT_BYTES).zip(&mut cpus).enumerate() {
            let tag = *slot.first().ok_or(truncated)?;
            let entry = u64_at(slot, 1).ok_or(truncated)?;
            let context = u64_at(slot, 9).ok_or(truncated)?;
            *cpu = match tag {
                TAG_OFF => VcpuPower::Off,
                TAG_ON_PENDING => VcpuPower::OnPending { entry, context },
                TAG_ON => VcpuPower::On,
                _ => return Err(StateError::Power { vcpu, tag }),
            };
            if tag != TAG_ON_PENDING && (entry, context) != (0, 0) {
                return Err(StateError::StrayStart { vcpu });
            }
            if vcpu >= usize::from(self.n) && tag != TAG_OFF {
                return Err(StateError::Absent { vcpu });
            }
        }
        self.cpus = cpus;
        Ok(())
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
    extern crate std;
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

    fn slot_at(vcpu: usize) -> usize {
        3 + vcpu * SLOT_BYTES
    }

    /// A 4-vCPU VM mid-run: vCPU 0 on, 1 pending with a 64-bit entry and
    /// context, 2 on, 3 switched on and off again.
    fn running() -> PowerState {
        let mut p = booted(4);
        let start = |p: &mut PowerState, target, entry, context| {
            let call = Call::CpuOn {
                target,
                entry,
                context,
            };
            assert!(matches!(h(p, call), Action::StartVcpu { .. }));
        };
        start(&mut p, 1, ENTRY + 0x40, 0xdead_beef_0000_0077);
        start(&mut p, 2, ENTRY, 0x1234);
        assert_eq!(p.take_start(VcpuId(2)), Some((ENTRY, 0x1234)));
        start(&mut p, 3, ENTRY, 0);
        p.take_start(VcpuId(3));
        assert_eq!(
            p.handle(Call::CpuOff, VcpuId(3), RAM, 0),
            Action::StopCaller
        );
        p
    }

    /// What every vCPU sees over a stretch of further calls.
    fn drive(p: &mut PowerState) -> std::vec::Vec<Action> {
        let mut seen = std::vec::Vec::new();
        let n = p.n_vcpus();
        for target in 0..u64::from(n) + 1 {
            seen.push(h(p, Call::AffinityInfo { target, level: 0 }));
        }
        for v in 0..n {
            if let Some((entry, context)) = p.take_start(VcpuId(v)) {
                seen.push(Action::StartVcpu {
                    vcpu: VcpuId(v),
                    entry,
                    context,
                });
            }
        }
        for target in 0..u64::from(n) {
            seen.push(h(p, cpu_on(target, ENTRY + 8)));
        }
        for v in 0..n {
            seen.push(p.handle(Call::CpuOff, VcpuId(v), RAM, 0));
            seen.push(p.handle(Call::Version, VcpuId(v), RAM, 0));
        }
        seen
    }

    #[test]
    fn restored_power_state_behaves_like_the_original() {
        let mut orig = running();
        let bytes = orig.save_state();
        assert_eq!(bytes[0], 1, "format version");
        // The target starts elsewhere, so every vCPU must be replaced.
        let mut copy = PowerState::new(4);
        copy.boot(0x4100_0000, 9);
        copy.restore_state(&bytes).unwrap();
        assert_eq!(copy, orig);
        assert_eq!(copy.save_state(), bytes);
        assert_eq!(
            copy.state(VcpuId(1)),
            Some(VcpuPower::OnPending {
                entry: ENTRY + 0x40,
                context: 0xdead_beef_0000_0077
            })
        );
        assert_eq!(drive(&mut copy), drive(&mut orig));
        assert_eq!(copy, orig);
    }

    #[test]
    fn pending_boot_survives_a_restore() {
        let mut p = PowerState::new(2);
        p.boot(u64::MAX - 3, u64::MAX);
        let mut q = PowerState::new(2);
        q.restore_state(&p.save_state()).unwrap();
        assert_eq!(q.take_start(VcpuId(0)), Some((u64::MAX - 3, u64::MAX)));
        assert_eq!(q.take_start(VcpuId(0)), None);
    }

    #[test]
    fn state_of_another_vcpu_count_is_refused() {
        let bytes = running().save_state();
        for n in [0, 1, 2, 3, 5, 8] {
            let mut p = PowerState::new(n);
            p.boot(ENTRY, 1);
            let before = p.clone();
            assert_eq!(
                p.restore_state(&bytes),
                Err(StateError::VcpuCount {
                    saved: 4,
                    expected: n
                })
            );
            assert_eq!(p, before);
        }
        // A VM with no vCPUs round-trips too.
        let mut p = PowerState::new(0);
        p.restore_state(&PowerState::new(0).save_state()).unwrap();
    }

    #[test]
    fn truncated_or_overlong_power_state_is_refused_and_changes_nothing() {
        let bytes = running().save_state();
        let mut target = booted(4);
        let before = target.clone();
        for len in 0..bytes.len() {
            assert_eq!(
                target.restore_state(&bytes[..len]),
                Err(StateError::Truncated { len })
            );
            assert_eq!(target, before, "after {len} bytes");
        }
        let mut long = [0u8; PowerState::STATE_BYTES + 1];
        long[..bytes.len()].copy_from_slice(&bytes);
        assert_eq!(
            target.restore_state(&long),
            Err(StateError::TooLong {
                len: PowerState::STATE_BYTES + 1
            })
        );
        assert_eq!(target, before);
    }

    #[test]
    fn invalid_power_fields_are_refused_and_change_nothing() {
        let good = running().save_state();
        let edit = |at: usize, byte: u8| {
            let mut b = good;
            b[at] = byte;
            b
        };
        let mut cases = std::vec::Vec::new();
        for v in [0, 2, 0xff] {
            cases.push((edit(0, v), StateError::Version(v)));
        }
        for (vcpu, tag) in [(0, 3), (3, 0xff), (7, 3)] {
            cases.push((edit(slot_at(vcpu), tag), StateError::Power { vcpu, tag }));
        }
        // vCPU 0 is on, 3 off, 6 absent: none may carry a start.
        for vcpu in [0, 3, 6] {
            for at in [1, 8, 9, 16] {
                cases.push((edit(slot_at(vcpu) + at, 1), StateError::StrayStart { vcpu }));
            }
        }
        for vcpu in 4..MAX_VCPUS {
            for tag in [TAG_ON_PENDING, TAG_ON] {
                cases.push((edit(slot_at(vcpu), tag), StateError::Absent { vcpu }));
            }
        }
        let mut target = booted(4);
        let before = target.clone();
        for (bytes, want) in cases {
            assert_eq!(target.restore_state(&bytes), Err(want));
            assert_eq!(target, before, "{want}");
        }
    }

    #[test]
    fn power_state_errors_explain_themselves() {
        use std::string::ToString;
        for (err, text) in [
            (
                StateError::Truncated { len: 3 },
                "PSCI state truncated (3 of 139 bytes)",
            ),
            (
                StateError::TooLong { len: 140 },
                "PSCI state too long (140 bytes, expected 139)",
            ),
            (
                StateError::Version(7),
                "PSCI state format version 7 is not supported (expected 1)",
            ),
            (
                StateError::VcpuCount {
                    saved: 4,
                    expected: 2,
                },
                "PSCI state is of a VM with 4 vCPUs, this one has 2",
            ),
            (
                StateError::Power { vcpu: 1, tag: 9 },
                "PSCI state of vCPU 1 is 9, not off (0), on pending (1) or on (2)",
            ),
            (
                StateError::StrayStart { vcpu: 2 },
                "PSCI state gives vCPU 2 an entry point or context but no pending start",
            ),
            (
                StateError::Absent { vcpu: 5 },
                "PSCI state powers vCPU 5, which the VM does not have",
            ),
        ] {
            assert_eq!(err.to_string(), text);
        }
    }

    #[test]
    fn corrupted_power_states_never_panic() {
        let good = running().save_state();
        let target = booted(4);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let mut bytes = good;
            for _ in 0..1 + next() % 3 {
                let at = (next() % PowerState::STATE_BYTES as u64) as usize;
                bytes[at] ^= (next() as u8) | 1;
            }
            let mut p = target.clone();
            match p.restore_state(&bytes) {
                Ok(()) => {
                    accepted += 1;
                    assert_eq!(p.save_state(), bytes, "round {round}");
                    drive(&mut p);
                    for v in 0..MAX_VCPUS as u16 + 1 {
                        p.take_start(VcpuId(v));
                    }
                }
                Err(_) => {
                    refused += 1;
                    assert_eq!(p, target, "round {round}");
                }
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted}/{refused}");
    }
}
